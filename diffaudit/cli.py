"""The `diffaudit` command.

Core commands (no server needed) and client commands (talk to a server over HTTP) are defined
here. Service commands (serve, worker, demo, token, db) belong to the service packages and are
added through the `diffaudit.commands` entry-point group, so the core never imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_MODEL_DIR = Path("var/models")

Handler = Callable[[argparse.Namespace], int]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _client(args: argparse.Namespace) -> Any:
    from diffaudit.client import Client

    if not args.token:
        raise SystemExit("no token: pass --token or set DIFFAUDIT_TOKEN (create one with `diffaudit token create`)")
    return Client(args.server, args.token)


def cmd_demo_model(args: argparse.Namespace) -> int:
    from diffaudit.demo import ensure_demo_model

    path = ensure_demo_model(args.name, Path(args.cache_dir), progress=True)
    print(path)
    return 0


def cmd_checkpoint_push(args: argparse.Namespace) -> int:
    _print_json(_client(args).push_checkpoint(Path(args.path), name=args.name, run=args.run, step=args.step))
    return 0


def cmd_dataset_push(args: argparse.Namespace) -> int:
    _print_json(_client(args).push_dataset(Path(args.path), name=args.name, heldout_fraction=args.heldout_fraction))
    return 0


def evaluation_spec_body(stages: Sequence[str] | None, spec_file: str | None) -> dict[str, Any]:
    """The `spec` of a request: a JSON file's content, with --stages overriding its stages."""
    spec: dict[str, Any] = json.loads(Path(spec_file).read_text()) if spec_file else {}
    if stages:
        spec["stages"] = list(stages)
    return spec


def cmd_evaluate(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.evaluate(args.checkpoint, args.dataset, evaluation_spec_body(args.stages, args.spec))
    print(f"evaluation {job['id']} {job['status']}", file=sys.stderr)
    if not args.wait:
        _print_json(job)
        return 0
    job = client.wait(job["id"])
    return print_outcome(client, job)


def print_outcome(client: Any, job: dict[str, Any]) -> int:
    """Print a finished job's short summary (one headline per stage); exit code 0 when it succeeded."""
    print(f"evaluation {job['id']}: {job['status']}")
    if job.get("error"):
        print(f"  {job['error']}")
    from diffaudit.stages.summaries import StageSummary

    if job["status"] in ("succeeded", "rejected"):
        results = client.results(job["id"])
        for name, summary in results["stages"].items():
            print(f"  {name}: {StageSummary.model_validate(summary).headline}")
        after = results.get("rejection", {}).get("after_rejection", {})
        for name, summary in after.items():  # analyses of the samples drawn before an early rejection
            print(f"  {name} (after the rejection): {StageSummary.model_validate(summary).headline}")
    return 0 if job["status"] == "succeeded" else 1


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the paired comparison; exit 1 when the candidate is worse on some metric."""
    comparison = _client(args).compare(args.baseline, args.candidate)
    _print_json(comparison)
    return 1 if any(m["verdict"] == "worse" for m in comparison["metrics"]) else 0


def cmd_status(args: argparse.Namespace) -> int:
    _print_json(_client(args).status(args.id))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    _print_json(_client(args).results(args.id))
    return 0


def cmd_irs_threshold(args: argparse.Namespace) -> int:
    from diffaudit.metrics.irs import irs_threshold_report

    _print_json(irs_threshold_report(args.n_train, args.n_sample, args.target, args.alpha_e))
    return 0


def cmd_irs(args: argparse.Namespace) -> int:
    import numpy as np

    from diffaudit.metrics.irs import irs_report

    test = np.load(args.test_features, mmap_mode="r") if args.test_features else None
    train, gen = np.load(args.train_features, mmap_mode="r"), np.load(args.gen_features, mmap_mode="r")
    _print_json(irs_report(train, gen, test, metric=args.metric, alpha_e=args.alpha_e))
    return 0


def load_feature_file(path: str, name: str) -> Any:
    """A .npy array of feature rows, memory-mapped; InvalidInput naming the option when it cannot be read."""
    import numpy as np

    from diffaudit.errors import InvalidInput

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInput(f"{name} {path}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"{name} {path}: an .npz archive; save one array with numpy.save")
    return array


def cmd_metrics(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from diffaudit.spec import DistributionSpec
    from diffaudit.stages.distribution import measure

    try:
        spec = DistributionSpec(
            k=args.k,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            bootstrap=args.bootstrap,
            moment_bootstrap=args.moment_bootstrap,
            confidence=args.confidence,
            seed=args.seed,
        )
        result = measure(spec, load_feature_file(args.real, "--real"), load_feature_file(args.fake, "--fake"))
    except ValidationError as exc:  # an option out of bounds
        options = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        print(f"error: {options}", file=sys.stderr)
        return 2
    except ValueError as exc:  # InvalidInput: a file or arrays that cannot be compared
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_json(result)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from diffaudit import gate

    options = gate.GateOptions(
        min_irs=args.min_irs,
        alpha_e=args.alpha_e,
        max_samples=args.max_samples,
        steps=args.steps,
        batch_size=args.batch_size,
        extractor=args.extractor,
        metric=args.metric,
        rule=args.rule,
        **{c.option: getattr(args, c.option) for c in gate.CRITERIA if c is not gate.IRS_CRITERION},
    )
    try:
        if args.server:
            verdict = gate.run_on_server(
                _client(args), Path(args.checkpoint), args.dataset, options, baseline=args.baseline
            )
        elif args.baseline:
            verdict = gate.Verdict("error", "--baseline compares two jobs on a server: give --server (and --token)")
        else:
            progress = gate.progress_printer()
            verdict = gate.run_in_process(Path(args.checkpoint), args.dataset, options, Path(args.cache_dir), progress)
    except Exception as exc:  # the gate reports every failure as an error verdict (exit 2), never a traceback
        verdict = gate.Verdict("error", f"{type(exc).__name__}: {exc}")
    print(gate.format_verdict(verdict))
    if args.junit:
        gate.write_junit(verdict, Path(args.junit))
    if args.json:
        gate.write_json(verdict, Path(args.json))
    return verdict.exit_code


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("DIFFAUDIT_SERVER", DEFAULT_SERVER))
    parser.add_argument("--token", default=os.environ.get("DIFFAUDIT_TOKEN"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffaudit", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("demo-model", help="train (or reuse) a built-in demo model and print its folder")
    p.add_argument("name", choices=["digits", "digits-overfit"])
    p.add_argument("--cache-dir", default=str(DEFAULT_MODEL_DIR))
    p.set_defaults(handler=cmd_demo_model)

    checkpoint = commands.add_parser("checkpoint", help="checkpoints on a server").add_subparsers(
        dest="action", required=True
    )
    p = checkpoint.add_parser("push", help="upload a diffusers folder or a zip of one")
    p.add_argument("path")
    p.add_argument("--name")
    p.add_argument("--run", help="training run the checkpoint belongs to (with --step)")
    p.add_argument("--step", type=int, help="its training step in that run")
    _add_client_options(p)
    p.set_defaults(handler=cmd_checkpoint_push)

    dataset = commands.add_parser("dataset", help="datasets on a server").add_subparsers(dest="action", required=True)
    p = dataset.add_parser("push", help="upload a zip of images or an .npz")
    p.add_argument("path")
    p.add_argument("--name")
    p.add_argument("--heldout-fraction", type=float, default=0.0)
    _add_client_options(p)
    p.set_defaults(handler=cmd_dataset_push)

    p = commands.add_parser("evaluate", help="submit an evaluation job")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--stages", nargs="+")
    p.add_argument("--spec", help="JSON file with an EvaluationSpec")
    p.add_argument("--wait", action="store_true", help="follow progress, then print the summary")
    _add_client_options(p)
    p.set_defaults(handler=cmd_evaluate)

    for name, handler, text in (("status", cmd_status, "a job's status"), ("results", cmd_results, "a job's results")):
        p = commands.add_parser(name, help=text)
        p.add_argument("id")
        _add_client_options(p)
        p.set_defaults(handler=handler)

    p = commands.add_parser(
        "compare", help="paired A/B comparison of two finished evaluations of one spec; exit 1 if B is worse"
    )
    p.add_argument("baseline", help="evaluation id of the baseline (A)")
    p.add_argument("candidate", help="evaluation id of the candidate (B)")
    _add_client_options(p)
    p.set_defaults(handler=cmd_compare)

    p = commands.add_parser("irs-threshold", help="k_min (Eq. 9) and the early-rejection schedule, as JSON")
    p.add_argument("--n-train", type=int, required=True)
    p.add_argument("--n-sample", type=int, required=True)
    p.add_argument("--target", type=float, required=True, help="IRS_d")
    p.add_argument("--alpha-e", type=float, default=0.05)
    p.set_defaults(handler=cmd_irs_threshold)

    p = commands.add_parser("irs", help="every IRS quantity from feature arrays (.npy), as JSON")
    p.add_argument("--train-features", required=True)
    p.add_argument("--gen-features", required=True)
    p.add_argument("--test-features", help="held-out real features: adjusted IRS_inf,a")
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean")
    p.add_argument("--alpha-e", type=float, default=0.05)
    p.set_defaults(handler=cmd_irs)

    p = commands.add_parser("metrics", help="FID, KID, precision/recall, density/coverage, Vendi of two .npy files")
    p.add_argument("--real", required=True, help="reference feature rows (N, D), .npy")
    p.add_argument("--fake", required=True, help="generated feature rows (M, D), .npy")
    p.add_argument("--k", type=int, default=3, help="k of the k-NN balls (precision, recall, density, coverage)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, help="default: 1000, or the smaller set's size when below")
    p.add_argument("--bootstrap", type=int, default=100, help="replicates of the ball metrics and KID")
    p.add_argument("--moment-bootstrap", type=int, default=10, help="replicates of FID and Vendi")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap intervals")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_metrics)

    p = commands.add_parser("gate", help="CI gate: exit 0 if every criterion passes, 1 rejected, 2 error")
    p.add_argument("--checkpoint", required=True, help="diffusers folder or zip of one")
    p.add_argument("--dataset", required=True, help="dataset id on the server; in-process: 'digits' or a .zip/.npz")
    p.add_argument("--min-irs", type=float, required=True, help="target IRS_d for IRS_inf")
    p.add_argument("--alpha-e", type=float, default=0.05)
    p.add_argument("--max-samples", type=int, default=1000, help="samples planned (fewer when rejected early)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (DDIM)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--extractor", default="random-cnn")
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean")
    p.add_argument("--rule", choices=["spending", "sequential", "bound"], default="spending")
    p.add_argument("--max-fid", type=float, help="FID of the distribution stage at most this")
    p.add_argument("--max-kid", type=float, help="KID (mean over subsets) at most this")
    for name in ("precision", "recall", "density", "coverage", "vendi"):
        p.add_argument(f"--min-{name}", type=float, help=f"{name} of the distribution stage at least this")
    p.add_argument("--max-copy-rate", type=float, help="share of samples the extraction test flags as copies, at most")
    p.add_argument(
        "--baseline",
        help="server only: evaluation id of an accepted job of the same gate options; reject when significantly worse",
    )
    p.add_argument("--junit", help="write a JUnit XML report here (one test case per criterion)")
    p.add_argument("--json", help="write the verdict as JSON here")
    p.add_argument("--server", default=os.environ.get("DIFFAUDIT_SERVER"), help="none: run in-process")
    p.add_argument("--token", default=os.environ.get("DIFFAUDIT_TOKEN"))
    p.add_argument("--cache-dir", default="var/gate", help="in-process: artifact store (features are reused)")
    p.set_defaults(handler=cmd_gate)

    for entry in entry_points(group="diffaudit.commands"):
        entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except Exception as exc:
        from diffaudit.client import ApiError

        if isinstance(exc, ApiError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
