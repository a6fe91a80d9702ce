"""The CI gate: does a checkpoint reach a target diversity (IRS) on a dataset? Exit 0 pass, 1 rejected, 2 error.

The evaluation is the stages sample, features and irs with early rejection (supplement Dombrowski et al., Eq. 9,
Sec. 7): sampling
stops as soon as the rule rejects, so a low-diversity checkpoint fails after a fraction of its planned samples. It
runs on a diffaudit server (upload, submit, follow progress) or in-process (diffaudit.pipeline.run over a LocalStore
in a cache folder, where training features and datasets are kept between runs).

Outcomes: "pass" (the irs stage's verdict is pass), "rejected" (early rejection while sampling, or the final test
rejects: the irs stage's verdict is fail), "error" (anything else: bad input, a failed job).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

EXIT_CODES = {"pass": 0, "rejected": 1, "error": 2}
GATE_STAGES = ("sample", "features", "irs")
BUILTIN_DATASET = "digits"

Outcome = Literal["pass", "rejected", "error"]


@dataclass(frozen=True)
class GateOptions:
    """What the gate asks for; everything else keeps the EvaluationSpec defaults."""

    min_irs: float
    alpha_e: float = 0.05
    max_samples: int = 1000
    steps: int = 50
    batch_size: int = 64
    extractor: str = "random-cnn"
    metric: str = "euclidean"
    rule: str = "sequential"
    seed: int = 0


def gate_spec(options: GateOptions) -> dict[str, Any]:
    """The EvaluationSpec body of the gate's evaluation (validated by EvaluationSpec or by the server)."""
    return {
        "stages": list(GATE_STAGES),
        "sample": {
            "n": options.max_samples,
            "steps": options.steps,
            "batch_size": options.batch_size,
            "seed": options.seed,
        },
        "features": {"extractor": options.extractor},
        "irs": {
            "target": options.min_irs,
            "alpha_e": options.alpha_e,
            "metric": options.metric,
            "rule": options.rule,
            "early_rejection": True,
        },
    }


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    evaluation: str | None = None  # the job's id (server) or folder (in-process)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


IRS_EVIDENCE = ("irs_inf", "irs_inf_lower", "irs_inf_upper", "n_learned", "n_sample", "n_train", "s_hat")


def verdict_from(
    status: str,
    results: dict[str, Any] | None,
    error: str | None = None,
    evaluation: str | None = None,
) -> Verdict:
    """The gate's verdict from a finished job: its status, results document (with "rejection") and error."""
    if status == "rejected":
        evidence = (results or {}).get("rejection", {})
        return Verdict("rejected", error or "rejected", evidence, evaluation)
    from diffaudit.stages.summaries import IRSSummary

    found = (results or {}).get("stages", {}).get("irs") if status == "succeeded" else None
    if found is None:
        return Verdict("error", error or f"the evaluation ended {status} without an irs result", {}, evaluation)
    irs = IRSSummary.model_validate(found)
    evidence = {
        **{key: getattr(irs.synthetic, key) for key in IRS_EVIDENCE},
        "irs_inf_a": irs.adjusted.get("irs_inf_a"),
        "target": irs.target,
        "k_min": irs.k_min,
        "decision": irs.decision,
    }
    return Verdict("pass" if irs.passed else "rejected", irs.headline, evidence, evaluation)


def format_verdict(verdict: Verdict) -> str:
    """The lines the gate prints: outcome, reason, evidence."""
    lines = [f"diffaudit gate: {verdict.outcome.upper()} (exit {verdict.exit_code})", f"  {verdict.reason}"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in sorted(verdict.evidence.items())]
    if verdict.evaluation:
        lines.append(f"  evaluation: {verdict.evaluation}")
    return "\n".join(lines)


def write_json(verdict: Verdict, path: Path) -> None:
    path.write_text(json.dumps(verdict.to_json(), indent=2, sort_keys=True) + "\n")


def write_junit(verdict: Verdict, path: Path) -> None:
    """A JUnit XML report with one test case, failed when rejected and in error on an error (CI test views)."""
    suite = ET.Element(
        "testsuite",
        name="diffaudit",
        tests="1",
        failures=str(int(verdict.outcome == "rejected")),
        errors=str(int(verdict.outcome == "error")),
    )
    case = ET.SubElement(suite, "testcase", classname="diffaudit.gate", name="irs_diversity")
    if verdict.outcome != "pass":
        tag = "failure" if verdict.outcome == "rejected" else "error"
        ET.SubElement(case, tag, message=verdict.reason, type=verdict.outcome).text = json.dumps(
            verdict.evidence, indent=2, sort_keys=True
        )
    ET.SubElement(case, "system-out").text = format_verdict(verdict)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


# --- on a server --------------------------------------------------------------------------------------


def run_on_server(
    client: Any, checkpoint: Path, dataset_id: str, options: GateOptions, out: TextIO = sys.stderr
) -> Verdict:
    """Upload the checkpoint, submit the evaluation, follow it (progress bars on `out`), and judge it."""
    uploaded = client.push_checkpoint(checkpoint)
    print(f"checkpoint {uploaded['id']} uploaded; evaluating on dataset {dataset_id}", file=out)
    job = client.evaluate(uploaded["id"], dataset_id, gate_spec(options))
    job = client.wait(job["id"], out=out)
    results = client.results(job["id"]) if job["status"] in ("succeeded", "rejected") else None
    return verdict_from(job["status"], results, job.get("error"), job["id"])


# --- in-process ---------------------------------------------------------------------------------------


def checkpoint_folder(path: Path, work: Path) -> Path:
    """A diffusers folder as it is, or a zip of one extracted safely into `work` (one wrapping folder unwrapped)."""
    from diffaudit.archive import ArchiveLimits, safe_extract_zip

    if path.is_dir():
        return path
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is neither a folder nor a zip file")
    safe_extract_zip(path, work, ArchiveLimits())
    entries = list(work.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else work


def local_dataset(store: Any, dataset: str) -> Any:
    """The built-in digits, or a dataset file (zip of images or .npz) ingested once, keyed by its content."""
    from diffaudit.datasets import Dataset, IngestLimits, ingest_dataset, write_builtin_dataset

    if dataset == BUILTIN_DATASET:
        prefix = f"datasets/{BUILTIN_DATASET}"
        if not store.exists(f"{prefix}/meta.json"):
            write_builtin_dataset(BUILTIN_DATASET, store, prefix)
        return Dataset.open(store, prefix)
    path = Path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {dataset!r} is neither {BUILTIN_DATASET!r} nor a dataset file (.zip or .npz)")
    prefix = f"datasets/{file_sha256(path)[:32]}"
    if not store.exists(f"{prefix}/meta.json"):
        ingest_dataset(path, store, prefix, IngestLimits())
    return Dataset.open(store, prefix)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_in_process(
    checkpoint: Path,
    dataset: str,
    options: GateOptions,
    cache_dir: Path,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Verdict:
    """The same evaluation as on a server, run here by diffaudit.pipeline.run over a LocalStore in `cache_dir`."""
    from diffaudit.pipeline import Rejected, results_document, run
    from diffaudit.report import JobFacts, store_report
    from diffaudit.spec import EvaluationSpec
    from diffaudit.store import LocalStore, ScopedStore

    spec = EvaluationSpec.model_validate(gate_spec(options))
    store = LocalStore(cache_dir)
    job_id = f"gate-{uuid.uuid4().hex[:12]}"
    job_prefix = f"evaluations/{job_id}"
    finished: dict[str, dict[str, Any]] = {}
    data = local_dataset(store, dataset)
    with tempfile.TemporaryDirectory(prefix="diffaudit-gate-") as tmp:
        folder = checkpoint_folder(checkpoint, Path(tmp) / "checkpoint")
        try:
            results = run(
                spec,
                checkpoint_dir=folder,
                dataset=data,
                store=store,
                job_prefix=job_prefix,
                on_progress=on_progress,
                on_stage_done=finished.__setitem__,
            )
            status, error = "succeeded", None
        except Rejected as rejection:
            results = {**results_document(spec, finished), "rejection": rejection.evidence}
            status, error = "rejected", rejection.reason
    facts = JobFacts(
        job_id, status, error, checkpoint={"path": str(checkpoint)}, dataset={"name": dataset, **asdict(data.info)}
    )
    store_report(facts, results, ScopedStore(store, job_prefix))
    return verdict_from(status, results, error, str(cache_dir / job_prefix))


def progress_printer(out: TextIO = sys.stderr) -> Callable[[str, int, int], None]:
    """An on_progress callback drawing one progress bar per stage."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def report(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, file=out, leave=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    return report
