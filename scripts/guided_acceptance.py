"""Acceptance of issue 5 on the demo model: the `guided` stage through diffaudit.pipeline.run, and its docs.

Runs two jobs on the built-in digits with the class-conditional demo model (same seeds for every set):
1. the default alpha = beta = 0.5 with N samples: the table of docs/guided.md (hardness, AvgkNN, LOF,
   precision of held-out real, baseline and guided samples; effect sizes and p-values; Table 1; Sec. 5);
2. a small alpha x beta grid job: the Fig. 3 image.
It rewrites the block between the acceptance markers of docs/guided.md and copies the figures to docs/img/.
Networks and training features are cached in the store, so a rerun only redoes what changed.

Threads, set deliberately: torch uses 1 thread (2 cores shared with other agents).
Every option defaults to the stage's own default (GuidedSpec), so a plain run is the acceptance.
Usage: .venv/bin/python scripts/guided_acceptance.py [--model PATH] [--n 256] [--scheduler ddpm] [--steps 250]
       [--tau 1.0] [--norm l2] [--block acceptance]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.demo import ensure_demo_model
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec, GuidedSpec
from diffaudit.store import LocalStore

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "guided.md"
IMAGES = ROOT / "docs" / "img"
GRID_N = 8  # samples per cell of the Fig. 3 grid job
PRECISION_FLOOR = 0.8  # issue 5: guided precision >= 0.8 x baseline's


def main() -> None:
    defaults = GuidedSpec()  # the stage's defaults, so a plain run measures what a job gets
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the 'digits' demo model)")
    parser.add_argument("--store", type=Path, default=ROOT / "var" / "guided-acceptance")
    parser.add_argument("--n", type=int, default=defaults.n)
    parser.add_argument("--scheduler", default=defaults.scheduler)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--tau", type=float, default=defaults.tau)
    parser.add_argument("--norm", choices=["linf", "l2"], default=defaults.norm)
    parser.add_argument("--block", default="acceptance", help="block of docs/guided.md to rewrite")
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=list(defaults.alphas), help="first pair = the acceptance pair"
    )
    parser.add_argument("--betas", type=float, nargs="+", default=list(defaults.betas))
    parser.add_argument("--classifier-steps", type=int, default=defaults.classifier_steps)
    parser.add_argument("--discriminator-steps", type=int, default=defaults.discriminator_steps)
    parser.add_argument("--no-grid", action="store_true", help="skip the Fig. 3 grid job")
    parser.add_argument(
        "--grid-scales", type=float, nargs="+", default=[0.0, 0.1, 0.5, 2.0], help="alphas and betas of the grid"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = args.model or ensure_demo_model("digits", ROOT / "var" / "models")
    store = LocalStore(args.store)
    if not store.exists("datasets/digits/meta.json"):
        write_builtin_dataset("digits", store, "datasets/digits")
    dataset = Dataset.open(store, "datasets/digits")
    guided = {
        "n": args.n,
        "scheduler": args.scheduler,
        "steps": args.steps,
        "tau": args.tau,
        "norm": args.norm,
        "classifier_steps": args.classifier_steps,
        "discriminator_steps": args.discriminator_steps,
    }
    tag = (
        f"{model.name}-n{args.n}-{args.scheduler}{args.steps}-tau{args.tau:g}-{args.norm}"
        f"-c{args.classifier_steps}-d{args.discriminator_steps}"
    )

    def job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        evaluation = EvaluationSpec.model_validate({"stages": ["guided"], "sample": {"n": 8, "steps": 10}, **spec})
        progress = ProgressPrinter(name)
        result = run(
            evaluation,
            checkpoint_dir=model,
            dataset=dataset,
            store=store,
            job_prefix=f"jobs/{name}",
            on_progress=progress,
        )
        print(file=sys.stderr)
        summary: dict[str, Any] = result["stages"]["guided"]
        print(name, summary["headline"])
        return summary

    pairs = "_".join(f"a{a:g}b{b:g}" for a, b in zip(args.alphas, args.betas, strict=True))
    main_job = f"pairs-{tag}-{pairs}"
    summary = job(main_job, {"guided": {**guided, "alphas": args.alphas, "betas": args.betas}})
    copy_image(store, main_job, "histograms.png", image_name(args.block, "histograms"))
    copy_image(store, main_job, "memorization.png", image_name(args.block, "memorization"))
    if not args.no_grid:
        grid_job = f"grid-{tag}-" + "_".join(f"{scale:g}" for scale in args.grid_scales)
        grid = {**guided, "n": GRID_N, "alphas": args.grid_scales, "betas": args.grid_scales, "grid": True}
        job(grid_job, {"guided": grid})
        copy_image(store, grid_job, "fig3.png", image_name(args.block, "fig3"))
    write_doc(args.block, results_markdown(summary, model, args))
    print(json.dumps(acceptance(summary), indent=2))


class ProgressPrinter:
    def __init__(self, job: str) -> None:
        self.job, self.last = job, -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent != self.last:
            self.last = percent
            print(f"\r{self.job} {stage}: {percent}%", end="", file=sys.stderr, flush=True)


def image_name(block: str, figure: str) -> str:
    """docs/img file of a figure: guided_<figure>.png for the acceptance block, guided_<block>_<figure>.png else."""
    return f"guided_{figure}.png" if block == "acceptance" else f"guided_{block}_{figure}.png"


def copy_image(store: LocalStore, job: str, name: str, target: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store.local_path(f"jobs/{job}/guided/{name}"), IMAGES / target)


def acceptance(summary: dict[str, Any]) -> dict[str, Any]:
    """Issue 5's three targets for the first (alpha, beta) pair."""
    name = summary["pairs"][0]["set"]
    baseline, guided = summary["sets"]["baseline"], summary["sets"][name]
    return {
        "higher_hardness": guided["hardness"]["mean"] > baseline["hardness"]["mean"],
        "hardness_p": guided["versus_baseline"]["hardness"]["welch_t_p"],
        "higher_avg_knn": guided["avg_knn"]["mean"] > baseline["avg_knn"]["mean"],
        "precision_ratio": guided["precision_ratio"],
        "precision_ok": guided["precision_ratio"] is not None and guided["precision_ratio"] >= PRECISION_FLOOR,
    }


def pretty(set_name: str) -> str:
    """alpha0.5_beta0.5 -> (alpha 0.5, beta 0.5)."""
    alpha, beta = set_name.removeprefix("alpha").split("_beta")
    return f"(alpha {alpha}, beta {beta})"


def interval(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3g} [{stats['ci_low']:.3g}, {stats['ci_high']:.3g}]"


def results_markdown(summary: dict[str, Any], model: Path, args: argparse.Namespace) -> str:
    name = summary["pairs"][0]["set"]
    guided_names = [pair["set"] for pair in summary["pairs"]]
    sets = summary["sets"]
    lines = [
        f"Model `{model.name}` (class-conditional, digits 16x16), {summary['scheduler'].upper()} "
        f"{summary['steps']} steps, {summary['n']} samples per set (class i % 10, seed i, same seeds for baseline "
        f"and guided), tau = {summary['tau']:g}, {summary['norm']} normalisation, classifier and discriminator "
        f"trained {args.classifier_steps} and {args.discriminator_steps} steps (classifier held-out accuracy "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["classifier"].get("heldout_accuracy", {}).items())
        + f"). Density metrics in the `{summary['extractor']['name']}` features (not the guidance networks'); "
        "means with 95% t intervals.",
        "",
        "| set | hardness (Eq. 3) | AvgkNN (k=5) | LOF (k=20) | precision |",
        "|---|---|---|---|---|",
    ]
    labels = {"real": "held-out real", "baseline": "baseline"}
    labels.update({key: f"guided {pretty(key)}" for key in guided_names})
    for key, label in labels.items():
        s = sets[key]
        row = f"| {label} | {interval(s['hardness'])} | {interval(s['avg_knn'])} | {interval(s['lof'])} |"
        lines.append(f"{row} {s['precision']:.3f} |")
    lines += [
        "",
        "Guided versus baseline, same seeds (Cohen's d and two-sided Welch t p-value of each metric; precision ratio "
        f"guided / baseline, target >= {PRECISION_FLOOR}):",
        "",
        "| set | hardness d (p) | AvgkNN d (p) | LOF d (p) | precision ratio |",
        "|---|---|---|---|---|",
    ]
    for key in guided_names:
        versus = sets[key]["versus_baseline"]
        cells = " | ".join(
            f"{versus[m]['cohens_d']:.2f} ({versus[m]['welch_t_p']:.2g})" for m in ("hardness", "avg_knn", "lof")
        )  # the header's order; result.json keeps its keys sorted
        ratio = sets[key]["precision_ratio"]
        lines.append(f"| {pretty(key)} | {cells} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    lines += [
        "",
        f"The cost table and the memorization check below are for the first pair, {pretty(name)}.",
        "",
        "Cost (Table 1): acceptance rates in hardness ranges at percentiles of the held-out real hardness, and the "
        "reduction of the cost of 5,000 samples from the range against rejection sampling from the baseline "
        "(measured seconds per sample: baseline "
        f"{summary['seconds_per_sample']['baseline']:.3f}, guided {summary['seconds_per_sample'][name]:.3f}):",
        "",
        "| range | hardness | baseline acceptance | guided acceptance | cost reduction |",
        "|---|---|---|---|---|",
    ]
    for row in summary["cost"]:
        high = "inf" if row["high"] is None else f"{row['high']:.1f}"
        reduction = "n/a" if row["reduction"] is None else f"x{row['reduction']:.2f}"
        lines.append(
            f"| {row['percentiles']} | {row['low']:.1f} - {high} | {row['baseline_acceptance']:.3f} "
            f"| {row['guided_acceptance']:.3f} | {reduction} |"
        )
    memorization = summary["memorization"]
    lines += [
        "",
        "Memorization check (Sec. 5): mean nearest-training-neighbour distance of guided samples "
        f"{memorization['guided_to_train_mean']:.3g}, of held-out real images "
        f"{memorization['heldout_to_train_mean']:.3g} "
        f"(ratio {memorization['ratio']:.2f}); closest guided pair {memorization['closest_distance']:.3g}, closest "
        f"held-out image {memorization['heldout_closest_distance']:.3g}.",
        "",
        f"Headline: {summary['headline']}",
        "",
        f"![histograms](img/{image_name(args.block, 'histograms')})",
        "",
        f"![closest pairs](img/{image_name(args.block, 'memorization')})",
        *([] if args.no_grid else ["", f"![Fig. 3 grid](img/{image_name(args.block, 'fig3')})"]),
    ]
    return "\n".join(lines)


def write_doc(name: str, block: str) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> of docs/guided.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOC.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{start}\n{block}\n{end}{tail}")


if __name__ == "__main__":
    main()
