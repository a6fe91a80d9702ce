"""The CI gate: does a checkpoint meet every criterion asked for on a dataset? Exit 0 pass, 1 rejected, 2 error.

Criteria (GateOptions; `--min-irs` always, the others when given): diversity IRS_inf >= IRS_d (the irs stage's test,
supplement Dombrowski et al., Eq. 9, Sec. 7), the distribution stage's FID, KID, precision, recall, density, coverage
and Vendi against a bound, and the memorization stage's copy rate (share of samples the extraction test flags, in
pixels) at most a bound. One evaluation runs every stage the criteria need, with IRS early rejection: sampling stops
as soon as the rule rejects, so a low-diversity checkpoint fails after a fraction of its planned samples, and the
other criteria are then reported as not evaluated. It runs on a diffaudit server (upload, submit, follow progress) or
in-process (diffaudit.pipeline.run over a LocalStore in a cache folder, where training features and datasets are kept
between runs).

Against a baseline (server only, run_on_server's `baseline`): after the candidate's job ends, it is compared with an
accepted job of the same spec through POST /v1/comparisons, and each compared metric that measures a gated criterion
(BASELINE_METRICS) is one more criterion, failed when the paired comparison says "worse".

Every criterion is reported with its value, interval and verdict. The IRS verdict is the irs stage's test; the
others compare the point estimate with the bound (the interval says how close the call is). Outcomes: "pass" (every
criterion passes), "rejected" (early rejection while sampling, or some criterion fails), "error" (anything else:
bad input, a failed job, a result without a criterion's value).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO

EXIT_CODES = {"pass": 0, "rejected": 1, "error": 2}
GATE_STAGES = ("sample", "features", "irs")
BUILTIN_DATASET = "digits"
COPY_RATE_LEVEL = 0.95  # level of the copy rate's Clopper-Pearson interval

Outcome = Literal["pass", "rejected", "error"]
CriterionVerdict = Literal["pass", "fail", "not evaluated"]


@dataclass(frozen=True)
class Criterion:
    """One thing the gate can ask for: the GateOptions field holding its bound, the stage that measures it, the
    summary key of its value, and whether the bound is a least ("min") or a most ("max") value."""

    name: str
    option: str
    stage: str
    key: str
    bound: Literal["min", "max"]


IRS_CRITERION = Criterion("irs_diversity", "min_irs", "irs", "irs_inf", "min")
CRITERIA = (
    IRS_CRITERION,
    Criterion("fid", "max_fid", "distribution", "fid", "max"),
    Criterion("kid", "max_kid", "distribution", "kid_mean", "max"),
    Criterion("precision", "min_precision", "distribution", "precision", "min"),
    Criterion("recall", "min_recall", "distribution", "recall", "min"),
    Criterion("density", "min_density", "distribution", "density", "min"),
    Criterion("coverage", "min_coverage", "distribution", "coverage", "min"),
    Criterion("vendi", "min_vendi", "distribution", "vendi", "min"),
    Criterion("copy_rate", "max_copy_rate", "memorization", "fraction_flagged", "max"),
)


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
    rule: str = "spending"
    seed: int = 0
    max_fid: float | None = None
    max_kid: float | None = None
    min_precision: float | None = None
    min_recall: float | None = None
    min_density: float | None = None
    min_coverage: float | None = None
    min_vendi: float | None = None
    max_copy_rate: float | None = None

    def criteria(self) -> tuple[Criterion, ...]:
        """The criteria asked for, in CRITERIA's order (IRS first)."""
        return tuple(c for c in CRITERIA if getattr(self, c.option) is not None)


# The memorization stage as the copy-rate criterion runs it: the extraction test in pixels; its volume growth (the
# costly part, not gated on) scores one training image with one ODE step.
GATE_MEMORIZATION = {"space": "pixels", "max_images": 1, "n_steps": 1}


def gate_spec(options: GateOptions) -> dict[str, Any]:
    """The EvaluationSpec body of the gate's evaluation (validated by EvaluationSpec or by the server): the IRS stages
    with early rejection, and the stages the other criteria need."""
    stages = {c.stage: None for c in options.criteria()}
    return {
        "stages": [*GATE_STAGES, *(s for s in stages if s not in GATE_STAGES)],
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
        **({"memorization": GATE_MEMORIZATION} if "memorization" in stages else {}),
    }


@dataclass(frozen=True)
class CriterionResult:
    """One criterion's bound, measured value with its interval, and verdict."""

    name: str
    bound: Literal["min", "max"]
    threshold: float
    value: float | None
    interval: list[float] | None
    verdict: CriterionVerdict
    detail: str = ""

    def describe(self) -> str:
        """e.g. "fid 52.1 [48.3, 55.9], at most 40: fail"."""
        wanted = f"{'at least' if self.bound == 'min' else 'at most'} {self.threshold:g}"
        measured = "" if self.value is None else f" {self.value:.4g}"
        if self.interval is not None:
            measured += f" [{self.interval[0]:.4g}, {self.interval[1]:.4g}]"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.name}{measured}, {wanted}: {self.verdict}{detail}"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)  # the IRS test's (or the early rejection's) evidence
    evaluation: str | None = None  # the job's id (server) or folder (in-process)
    criteria: list[CriterionResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


IRS_EVIDENCE = ("irs_inf", "irs_inf_lower", "irs_inf_upper", "n_learned", "n_sample", "n_train", "s_hat")


class MissingCriterion(LookupError):
    """A finished evaluation without the value of a criterion the gate asked for."""


def verdict_from(
    status: str,
    results: dict[str, Any] | None,
    error: str | None = None,
    evaluation: str | None = None,
    options: GateOptions | None = None,
) -> Verdict:
    """The gate's verdict from a finished job: its status, results document (with "rejection") and error, judged on
    the criteria of `options` (None: the IRS criterion alone, at the irs stage's target)."""
    criteria = options.criteria() if options is not None else (IRS_CRITERION,)
    if status == "rejected":
        evidence = (results or {}).get("rejection", {})
        reason = error or "rejected"
        judged = [_rejected_early(c, options, evidence, reason) for c in criteria]
        return Verdict("rejected", reason, evidence, evaluation, judged)
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
    try:
        judged = [_judged(c, options, results or {}) for c in criteria]
    except MissingCriterion as missing:
        return Verdict("error", str(missing), evidence, evaluation)
    return judged_verdict(judged, evidence, evaluation, irs.headline)


def judged_verdict(
    judged: list[CriterionResult], evidence: dict[str, Any], evaluation: str | None, headline: str
) -> Verdict:
    """Rejected when some criterion fails, else pass; the reason lists the failed ones (`headline` for one alone)."""
    failed = [c for c in judged if c.verdict == "fail"]
    if len(judged) == 1:
        reason = headline
    elif failed:
        reason = f"{len(failed)} of {len(judged)} criteria failed: " + "; ".join(c.describe() for c in failed)
    else:
        reason = f"all {len(judged)} criteria pass"
    return Verdict("rejected" if failed else "pass", reason, evidence, evaluation, judged)


# --- against a baseline job -----------------------------------------------------------------------------

# The comparison's metrics (diffaudit.comparison) that measure a gate criterion: IRS_inf, and the copy rate in pixels
# (the space the copy-rate criterion reads).
BASELINE_METRICS = {"irs_inf": IRS_CRITERION.name, "copy_rate_pixels": "copy_rate"}


def baseline_criterion(comparison: dict[str, Any], baseline: str) -> CriterionResult:
    """One compared metric as a criterion: the paired difference (candidate minus baseline) and its interval; it
    fails when the comparison's verdict is "worse" (the interval excludes zero on the bad side)."""
    name = f"{BASELINE_METRICS[comparison['metric']]}_vs_baseline"
    verdict: CriterionVerdict = "fail" if comparison["verdict"] == "worse" else "pass"
    detail = (
        f"{comparison['verdict']} than baseline {baseline}: {comparison['baseline']:.4g} -> "
        f"{comparison['candidate']:.4g}, paired bootstrap of {comparison['n_pairs']} pairs at error rate "
        f"{comparison['error_rate']:g}"
    )
    bound: Literal["min", "max"] = "min" if comparison["higher_is_better"] else "max"
    interval = [float(comparison["interval"][0]), float(comparison["interval"][1])]
    return CriterionResult(name, bound, 0.0, float(comparison["difference"]), interval, verdict, detail)


def with_baseline(verdict: Verdict, comparison: dict[str, Any] | None, baseline: str, options: GateOptions) -> Verdict:
    """The verdict with one more criterion per gated metric of the comparison (POST /v1/comparisons' answer) of the
    candidate job with the `baseline` job; None when the candidate was rejected early (nothing to compare: those
    criteria are not evaluated). An error verdict stays as it is."""
    if verdict.outcome == "error":
        return verdict
    asked = {c.name for c in options.criteria()}
    if comparison is None:
        detail = "sampling stopped at the early IRS rejection: no comparison with the baseline"
        extra = [
            CriterionResult(f"{name}_vs_baseline", "min", 0.0, None, None, "not evaluated", detail)
            for name in BASELINE_METRICS.values()
            if name in asked
        ]
        return replace(verdict, criteria=[*verdict.criteria, *extra])
    gated = [m for m in comparison["metrics"] if BASELINE_METRICS.get(m["metric"]) in asked]
    if not gated:
        reason = f"the comparison with baseline {baseline} measured no gated criterion"
        return Verdict("error", reason, {}, verdict.evaluation)
    judged = [*verdict.criteria, *(baseline_criterion(m, baseline) for m in gated)]
    return judged_verdict(judged, verdict.evidence, verdict.evaluation, verdict.reason)


def _threshold(criterion: Criterion, options: GateOptions | None, fallback: float) -> float:
    return float(getattr(options, criterion.option)) if options is not None else fallback


def _rejected_early(
    criterion: Criterion, options: GateOptions | None, evidence: dict[str, Any], reason: str
) -> CriterionResult:
    """After an early IRS rejection: the IRS criterion failed, the others were never measured."""
    threshold = _threshold(criterion, options, float(evidence.get("target", 0.0)))
    if criterion is IRS_CRITERION:
        return CriterionResult(criterion.name, criterion.bound, threshold, None, None, "fail", reason)
    detail = "sampling stopped at the early IRS rejection"
    return CriterionResult(criterion.name, criterion.bound, threshold, None, None, "not evaluated", detail)


def _judged(criterion: Criterion, options: GateOptions | None, results: dict[str, Any]) -> CriterionResult:
    """A criterion's value, interval and verdict from the finished job's summaries."""
    from diffaudit.stages.summaries import IRSSummary

    summary = results.get("stages", {}).get(criterion.stage)
    if summary is None:
        raise MissingCriterion(f"the evaluation has no {criterion.stage} result, which {criterion.name} needs")
    if criterion is IRS_CRITERION:
        irs = IRSSummary.model_validate(summary)
        interval = [float(irs.synthetic.irs_inf_lower), float(irs.synthetic.irs_inf_upper)]
        threshold = _threshold(criterion, options, float(irs.target))
        verdict: CriterionVerdict = "pass" if irs.passed else "fail"  # the irs stage's test, not the point estimate
        detail = f"the irs stage's test, {irs.decision.get('rule')} rule"
        return CriterionResult(
            criterion.name, criterion.bound, threshold, float(irs.synthetic.irs_inf), interval, verdict, detail
        )
    value, found, detail = (
        copy_rate(summary) if criterion.stage == "memorization" else distribution_value(criterion, summary)
    )
    threshold = _threshold(criterion, options, value)
    passed = value >= threshold if criterion.bound == "min" else value <= threshold
    return CriterionResult(
        criterion.name, criterion.bound, threshold, value, found, "pass" if passed else "fail", detail
    )


def distribution_value(criterion: Criterion, summary: dict[str, Any]) -> tuple[float, list[float] | None, str]:
    """A distribution stage value, its bootstrap interval (None without replicates), and the counts behind it."""
    from diffaudit.stages.summaries import DistributionSummary

    distribution = DistributionSummary.model_validate(summary)
    found = distribution.intervals.get(criterion.key)
    interval = None if found is None else [float(found[0]), float(found[1])]
    detail = f"{distribution.n_fake} generated vs {distribution.n_real} training"
    return float(getattr(distribution, criterion.key)), interval, detail


def copy_rate(memorization: dict[str, Any]) -> tuple[float, list[float] | None, str]:
    """The pixel-space extraction test's share of flagged samples, its Clopper-Pearson interval, and the counts."""
    from scipy.stats import binomtest

    extraction = memorization["spaces"]["pixels"]["extraction"]
    flagged, total = int(extraction["n_flagged"]), int(extraction["n_generated"])
    ci = binomtest(flagged, total).proportion_ci(confidence_level=COPY_RATE_LEVEL, method="exact")
    return flagged / total, [float(ci.low), float(ci.high)], f"{flagged} of {total} samples flagged as copies"


def format_verdict(verdict: Verdict) -> str:
    """The lines the gate prints: outcome, reason, each criterion, evidence."""
    lines = [f"diffaudit gate: {verdict.outcome.upper()} (exit {verdict.exit_code})", f"  {verdict.reason}"]
    lines += [f"  criterion {c.describe()}" for c in verdict.criteria]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in sorted(verdict.evidence.items())]
    if verdict.evaluation:
        lines.append(f"  evaluation: {verdict.evaluation}")
    return "\n".join(lines)


def write_json(verdict: Verdict, path: Path) -> None:
    path.write_text(json.dumps(verdict.to_json(), indent=2, sort_keys=True) + "\n")


def write_junit(verdict: Verdict, path: Path) -> None:
    """A JUnit XML report for CI test views: one test case per criterion (a failure when it fails, skipped when not
    evaluated; the IRS case carries the IRS evidence), or one `irs_diversity` case for a verdict without criteria (an
    error, or a verdict built by hand), failed when rejected and in error on an error."""
    if verdict.criteria:
        cases = [
            (c.name, _CRITERION_STATE[c.verdict], c.describe(), _criterion_body(verdict, c)) for c in verdict.criteria
        ]
    else:
        cases = [(IRS_CRITERION.name, _OUTCOME_STATE[verdict.outcome], verdict.reason, verdict.evidence)]
    states = [state for _, state, _, _ in cases]
    suite = ET.Element(
        "testsuite",
        name="diffaudit",
        tests=str(len(cases)),
        failures=str(states.count("failure")),
        errors=str(states.count("error")),
        skipped=str(states.count("skipped")),
    )
    for name, state, message, body in cases:
        case = ET.SubElement(suite, "testcase", classname="diffaudit.gate", name=name)
        if state == "skipped":
            ET.SubElement(case, state, message=message)
        elif state is not None:
            element = ET.SubElement(case, state, message=message, type=verdict.outcome)
            element.text = json.dumps(body, indent=2, sort_keys=True)
        ET.SubElement(case, "system-out").text = format_verdict(verdict)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


_OUTCOME_STATE: dict[str, str | None] = {"pass": None, "rejected": "failure", "error": "error"}
_CRITERION_STATE: dict[str, str | None] = {"pass": None, "fail": "failure", "not evaluated": "skipped"}


def _criterion_body(verdict: Verdict, criterion: CriterionResult) -> dict[str, Any]:
    """What a failed case shows: the IRS evidence for the IRS criterion, the criterion's fields for the others."""
    return verdict.evidence if criterion.name == IRS_CRITERION.name else asdict(criterion)


# --- on a server --------------------------------------------------------------------------------------


def run_on_server(
    client: Any,
    checkpoint: Path,
    dataset_id: str,
    options: GateOptions,
    out: TextIO = sys.stderr,
    baseline: str | None = None,
) -> Verdict:
    """Upload the checkpoint, submit the evaluation, follow it (progress bars on `out`), and judge it; with
    `baseline` (an evaluation id of the same spec), also compare it with that job through POST /v1/comparisons."""
    from diffaudit.client import ApiError

    uploaded = client.push_checkpoint(checkpoint)
    print(f"checkpoint {uploaded['id']} uploaded; evaluating on dataset {dataset_id}", file=out)
    job = client.evaluate(uploaded["id"], dataset_id, gate_spec(options))
    job = client.wait(job["id"], out=out)
    results = client.results(job["id"]) if job["status"] in ("succeeded", "rejected") else None
    verdict = verdict_from(job["status"], results, job.get("error"), job["id"], options)
    if baseline is None or verdict.outcome == "error":
        return verdict
    try:
        comparison = client.compare(baseline, job["id"]) if job["status"] == "succeeded" else None
    except ApiError as refused:  # e.g. 422: the baseline's spec differs from the gate's
        return Verdict("error", f"comparison with baseline {baseline} refused: {refused}", {}, job["id"])
    return with_baseline(verdict, comparison, baseline, options)


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
    return verdict_from(status, results, error, str(cache_dir / job_prefix), options)


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
