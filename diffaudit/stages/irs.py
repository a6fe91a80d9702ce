"""The `irs` stage: Image Retrieval Score with bounds and a verdict, and the early-rejection monitor of sampling.

Paper: Dombrowski et al., supplementary material (IRS, Eq. 9, Sec. 7 and Fig. 7, Sec. 11); the quantities come from
diffaudit.metrics.irs and the decision rules from diffaudit.metrics.early_rejection.

- References are the training split's features (the features stage's cached training features indexed with the
  split's training indices); queries are the generated features; the held-out split's features give the adjusted
  IRS_inf,a. A dataset without a held-out split gets a seeded (stratified when labelled) split, recorded in
  `irs/heldout_indices.npy` and the summary, so N_train then excludes those items.
- The target IRS_d applies to the unadjusted IRS_inf, as Eq. 9 does (Sec. 11: "does not account for measurement
  gap"); IRS_inf,a is reported beside it.
- Verdict: the spec's rule applied to the generated samples in order ("bound" when early rejection is off, which
  at the end is exactly Eq. 9's test N_learned <= k_min). A run the monitor let through therefore passes.
- With `irs.early_rejection`, the sample stage calls EarlyRejectionMonitor on every batch: it embeds the batch with
  the spec's extractor, retrieves the nearest training image of each sample, updates the rule, records its state in
  `irs/early_rejection.json`, and on rejection writes the Fig. 7 plot and raises Rejected with the evidence.
  Replayed batches after a resume give the same decision (the rule sees the same indices in the same order).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffaudit.datasets import Dataset, choose_heldout
from diffaudit.features.cache import training_features
from diffaudit.features.extractors import Extractor
from diffaudit.features.registry import create_extractor
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.early_rejection import Decision, make_rule
from diffaudit.metrics.irs import irs_per_class, irs_report, k_min, target_distinct
from diffaudit.metrics.occupancy import occupancy_mean
from diffaudit.pipeline import Queue, Rejected, StageContext
from diffaudit.retrieval.knn import nearest_neighbours
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.features import check_feature_dims
from diffaudit.store import load_array, load_json, save_array, save_json

SAMPLES_KEY = "sample/images.npy"
SAMPLE_LABELS_KEY = "sample/labels.npy"
GENERATED_KEY = "features/generated.npy"
HELDOUT_KEY = "irs/heldout_indices.npy"
NEAREST_KEY = "irs/nearest_training.npy"  # position in the training split of each sample's nearest image
CURVE_KEY = "irs/distinct_curve.png"
GRID_KEY = "irs/most_retrieved.png"
EARLY_KEY = "irs/early_rejection.json"
EARLY_NEAREST_KEY = "irs/early_nearest_training.npy"
GRID_SAMPLES_PER_ROW = 8
CURVE_POINTS = 200


# --- the split and the features ------------------------------------------------------------------


@dataclass(frozen=True)
class IRSSplit:
    """Dataset item indices of the retrieval references (training) and of the held-out real queries."""

    train: np.ndarray
    heldout: np.ndarray
    source: str  # "dataset": the dataset's own held-out split; "seeded": made by this stage

    def describe(self, spec: EvaluationSpec) -> dict[str, Any]:
        seeded = (
            {"heldout_fraction": spec.irs.heldout_fraction, "seed": spec.irs.seed} if self.source == "seeded" else {}
        )
        return {"source": self.source, "n_train": int(self.train.size), "n_heldout": int(self.heldout.size), **seeded}


def irs_split(dataset: Dataset, spec: EvaluationSpec) -> IRSSplit:
    """The dataset's held-out split, or a seeded one (stratified when labelled) when it has none."""
    heldout = dataset.heldout_indices()
    if heldout.size:
        return IRSSplit(dataset.train_indices(), heldout, "dataset")
    mask = np.zeros(dataset.info.count, dtype=bool)
    choose_heldout(dataset.labels, spec.irs.heldout_fraction, spec.irs.seed, mask)
    if not mask.any():
        raise ValueError(
            f"the dataset has {dataset.info.count} items: too few to hold out irs.heldout_fraction = "
            f"{spec.irs.heldout_fraction} of them; raise it or upload a dataset with a held-out split"
        )
    return IRSSplit(np.flatnonzero(~mask), np.flatnonzero(mask), "seeded")


def spec_extractor(ctx: StageContext) -> Extractor:
    """The features stage's extractor, as the spec describes it."""
    spec = ctx.spec.features
    return create_extractor(
        spec.extractor, weights=spec.weights, seed=spec.seed, device=ctx.device, allow_downloads=ctx.allow_downloads
    )


def all_features(ctx: StageContext) -> np.ndarray:
    """Features of every dataset item: the dataset's own (kind "features") or the cached training features."""
    key = ctx.results["features"]["training_features_key"]
    return np.asarray(ctx.dataset.features if key is None else load_array(ctx.cache, key), dtype=np.float32)


# --- the distinct-count curve (Fig. 7) ---------------------------------------------------------------


def distinct_trajectory(nn_indices: np.ndarray) -> np.ndarray:
    """Distinct nearest training images after each sample, in generation order."""
    nn = np.asarray(nn_indices).ravel()
    is_new = np.zeros(nn.size, dtype=np.int64)
    is_new[np.unique(nn, return_index=True)[1]] = 1
    return np.cumsum(is_new)


def rejection_boundary(rule: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distinct counts at or below which the rule rejects: per look (sequential), or from the duplicates bound."""
    if rule.name == "sequential":
        looks = rule.schedule
        return np.array([look["samples"] for look in looks]), np.array([look["threshold"] for look in looks])
    slack = rule.n_planned - rule.k_min  # duplicates that make n_planned - duplicates <= k_min
    samples = np.arange(max(1, slack), rule.n_planned + 1)
    return samples, samples - slack


def distinct_curve_png(trajectory: np.ndarray, rule: Any, stop: Decision | None) -> bytes:
    """Fig. 7: distinct images against samples drawn, the expectation at the target, the rule's boundary, the stop."""
    n_planned, s_d = rule.n_planned, rule.target_distinct
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    grid = np.unique(np.geomspace(1, n_planned, CURVE_POINTS).round().astype(int))
    axis.plot(
        grid, [occupancy_mean(int(n), rule.n_train) for n in grid], ":", color="grey", label="ideal (all N_train)"
    )
    axis.plot(
        grid, [occupancy_mean(int(n), s_d) for n in grid], "--", color="C2", label=f"expected at IRS_d = {rule.target}"
    )
    boundary_x, boundary_y = rejection_boundary(rule)
    steps = rule.name == "sequential"  # thresholds hold from one look to the next
    label = f"rejection boundary ({rule.name})"
    axis.plot(boundary_x, boundary_y, color="C3", label=label, drawstyle="steps-post" if steps else "default")
    axis.fill_between(boundary_x, 1, boundary_y, color="C3", alpha=0.1, step="post" if steps else None)
    axis.plot(np.arange(1, trajectory.size + 1), trajectory, color="C0", lw=2, label="this model")
    if stop is not None and stop.reject:
        axis.plot(
            [stop.samples_drawn], [stop.distinct], "X", color="C3", ms=12, label=f"rejected at {stop.samples_drawn}"
        )
    axis.set_xscale("log")  # log-log: an early stop stays visible beside the planned total
    axis.set_yscale("log")
    axis.set_xlim(1, n_planned)
    axis.set_ylim(1, None)
    axis.set_xlabel("samples drawn")
    axis.set_ylabel("distinct nearest training images")
    axis.set_title(f"N_train = {rule.n_train}, {n_planned} samples planned, alpha_e = {rule.alpha_e}")
    axis.legend(loc="upper left", fontsize=8)
    return figure_png(figure)


def figure_png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# --- early rejection while sampling ------------------------------------------------------------------


def verdict_rule_name(spec: EvaluationSpec) -> str:
    """The rule behind the verdict: the spec's rule with early rejection, else Eq. 9 ("bound" at the end)."""
    return spec.irs.rule if spec.irs.early_rejection else "bound"


class EarlyRejectionMonitor:
    """on_batch of the sample stage: retrieve each batch, update the rule, raise Rejected once it rejects."""

    def __init__(self, ctx: StageContext) -> None:
        spec = ctx.spec
        self.ctx = ctx
        self.extractor = spec_extractor(ctx)
        dataset = ctx.dataset
        split = irs_split(dataset, spec)
        features = training_features(dataset, self.extractor, ctx.cache, spec.features.batch_size)
        self.train = np.asarray(features[split.train], dtype=np.float32)
        self.rule = make_rule(spec.irs.rule, len(self.train), spec.sample.n, spec.irs.target, spec.irs.alpha_e)
        self.nearest: list[np.ndarray] = []

    @property
    def samples(self) -> int:
        return sum(len(nn) for nn in self.nearest)

    def __call__(self, start: int, images: np.ndarray) -> None:
        if start != self.samples:
            raise RuntimeError(f"batches must arrive in order: expected sample {self.samples}, got {start}")
        if start == 0 and self.ctx.dataset.info.kind == "features":
            check_feature_dims(self.extractor, images.shape[1:], self.train.shape[1])
        queries = self.extractor(np.asarray(images))
        nn = nearest_neighbours(queries, self.train, 1, self.ctx.spec.irs.metric, device=self.ctx.device).indices[:, 0]
        self.nearest.append(nn)
        decision = self.rule.update(nn)
        done = self.samples == self.rule.n_planned
        save_json(self.ctx.job, EARLY_KEY, self.record(decision, done))
        if decision.reject or done:
            nearest = np.concatenate(self.nearest)
            save_array(self.ctx.job, EARLY_NEAREST_KEY, nearest)
        if decision.reject:
            self.ctx.job.put_bytes(CURVE_KEY, distinct_curve_png(distinct_trajectory(nearest), self.rule, decision))
            raise Rejected(rejection_reason(decision, self.ctx.spec), self.record(decision, done))

    def record(self, decision: Decision, done: bool) -> dict[str, Any]:
        """The rule's state after the latest batch: the evidence when it rejects."""
        irs = self.ctx.spec.irs
        return {
            **decision.to_dict(),
            "samples_generated": self.samples,
            "n_planned": self.rule.n_planned,
            "n_train": self.rule.n_train,
            "target": irs.target,
            "target_distinct": self.rule.target_distinct,
            "alpha_e": irs.alpha_e,
            "k_min": k_min(self.rule.n_train, self.rule.n_planned, irs.target, irs.alpha_e),
            "metric": irs.metric,
            "extractor": self.extractor.name,
            "completed": done,
            "plot": CURVE_KEY if decision.reject else None,
        }


def rejection_reason(decision: Decision, spec: EvaluationSpec) -> str:
    return (
        f"IRS early rejection ({decision.rule} rule): {decision.distinct} distinct training images retrieved by "
        f"{decision.samples_drawn} samples ({decision.duplicates} duplicates), at or below the threshold "
        f"{decision.threshold} for IRS_d = {spec.irs.target}; probability {decision.probability:.2g} "
        f"< alpha {decision.alpha:.2g}"
    )


def early_rejection_monitor(ctx: StageContext) -> EarlyRejectionMonitor | None:
    """The sample stage's on_batch when the job asks for the irs stage with early rejection, else None."""
    if "irs" not in ctx.spec.stages or not ctx.spec.irs.early_rejection:
        return None
    return EarlyRejectionMonitor(ctx)


# --- the stage ---------------------------------------------------------------------------------------


def most_retrieved_grid(
    images: np.ndarray, train_items: np.ndarray, samples: np.ndarray, gen_nn: np.ndarray, rows: int
) -> tuple[bytes, list[dict[str, int]]]:
    """Rows of (training image, then up to 8 samples that retrieved it), most retrieved first; and the counts.

    images: the dataset's images (memory-mapped); train_items: its item index of each training position.
    """
    counts = np.bincount(gen_nn, minlength=len(train_items))
    top = np.argsort(-counts, kind="stable")[: min(rows, int((counts > 0).sum()))]
    channels = max(images.shape[3], samples.shape[3])
    blank = np.full((1, *samples.shape[1:3], channels), 255, dtype=np.uint8)
    tiles = []
    for t in top:
        hits = np.flatnonzero(gen_nn == t)[:GRID_SAMPLES_PER_ROW]
        row = [_channels(images[train_items[t : t + 1]], channels), _channels(samples[hits], channels)]
        tiles += [*row, np.repeat(blank, GRID_SAMPLES_PER_ROW - len(hits), axis=0)]
    grid = image_grid(np.concatenate(tiles), ncols=1 + GRID_SAMPLES_PER_ROW)
    return png_bytes(grid), [{"item": int(train_items[t]), "retrieved_by": int(counts[t])} for t in top]


def _channels(images: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(images, channels // images.shape[3], axis=3)


def irs_headline(synthetic: dict[str, Any], target: float, passed: bool, adjusted: float) -> str:
    return (
        f"IRS_inf {synthetic['irs_inf']:.2f} [{synthetic['irs_inf_lower']:.2f}, {synthetic['irs_inf_upper']:.2f}] "
        f"(target {target}): {'pass' if passed else 'fail'}; N_learned {synthetic['n_learned']} of "
        f"{synthetic['n_sample']} samples, IRS_inf,a {adjusted:.2f}"
    )


class IRSStage:
    name = "irs"
    queue: Queue = "cpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.irs
        split = irs_split(ctx.dataset, ctx.spec)
        save_array(ctx.job, HELDOUT_KEY, split.heldout)
        features = all_features(ctx)
        train, heldout = features[split.train], features[split.heldout]
        generated = np.asarray(load_array(ctx.job, GENERATED_KEY), dtype=np.float32)
        ctx.report(0, 2)
        gen_nn = nearest_neighbours(generated, train, 1, spec.metric, device=ctx.device).indices[:, 0]
        save_array(ctx.job, NEAREST_KEY, gen_nn)
        quantities = irs_report(train, generated, heldout, spec.metric, spec.alpha_e, gen_nn=gen_nn)
        ctx.report(1, 2)
        rule = make_rule(verdict_rule_name(ctx.spec), len(train), len(gen_nn), spec.target, spec.alpha_e)
        decision = rule.update(gen_nn)
        ctx.job.put_bytes(CURVE_KEY, distinct_curve_png(distinct_trajectory(gen_nn), rule, decision))
        summary: dict[str, Any] = {
            "headline": irs_headline(
                quantities["synthetic"], spec.target, not decision.reject, quantities["adjusted"]["irs_inf_a"]
            ),
            "verdict": "fail" if decision.reject else "pass",
            "passed": not decision.reject,
            "target": spec.target,
            "target_distinct": target_distinct(len(train), spec.target),
            "k_min": k_min(len(train), len(gen_nn), spec.target, spec.alpha_e),
            "below_target": quantities["synthetic"]["irs_inf"] < spec.target,
            "metric": spec.metric,
            "alpha_e": spec.alpha_e,
            "decision": decision.to_dict(),
            "heldout": split.describe(ctx.spec),
            **quantities,
        }
        labels = self.labels(ctx, split)
        if labels is not None:
            summary["per_class"] = irs_per_class(train, generated, *labels, spec.metric, spec.alpha_e)
        if ctx.dataset.info.kind == "images":
            samples = load_array(ctx.job, SAMPLES_KEY)
            grid, counts = most_retrieved_grid(ctx.dataset.images, split.train, samples, gen_nn, spec.grid_images)
            ctx.job.put_bytes(GRID_KEY, grid)
            summary["most_retrieved"] = counts
        if ctx.job.exists(EARLY_KEY):
            summary["early_rejection"] = load_json(ctx.job, EARLY_KEY)
        ctx.report(2, 2)
        return summary

    @staticmethod
    def labels(ctx: StageContext, split: IRSSplit) -> tuple[np.ndarray, np.ndarray] | None:
        """(training labels, generated labels) when the dataset is labelled and the model class-conditional."""
        if ctx.dataset.labels is None or not ctx.job.exists(SAMPLE_LABELS_KEY):
            return None
        return np.asarray(ctx.dataset.labels)[split.train], np.asarray(load_array(ctx.job, SAMPLE_LABELS_KEY))
