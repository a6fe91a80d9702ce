"""IRS early rejection while sampling, and the IRS split: shared by the sample and irs stages.

Paper: Dombrowski et al., "Image Retrieval Score" supplementary material (Eq. 9, Sec. 7 and Fig. 7, Sec. 11); the
decision rules are diffaudit.metrics.early_rejection.

- The split: references are the training split's features, the held-out split gives the adjusted IRS_inf,a. A
  dataset without a held-out split gets a seeded (stratified when labelled) split, so N_train then excludes those.
- With `irs.early_rejection`, the sample stage calls EarlyRejectionMonitor on every batch: it embeds the batch with
  the features stage's extractor, retrieves the nearest training image of each sample, updates the rule, records
  its state in `irs/early_rejection.json`, and on rejection writes the Fig. 7 plot and raises Rejected with the
  evidence. Replayed batches after a resume give the same decision (the rule sees the same indices in order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffaudit.datasets import Dataset, choose_heldout
from diffaudit.errors import InvalidInput
from diffaudit.features.cache import training_features
from diffaudit.features.extractors import check_feature_dims
from diffaudit.metrics.early_rejection import Decision, make_rule
from diffaudit.metrics.irs import k_min
from diffaudit.plots.irs import distinct_curve_png
from diffaudit.retrieval.knn import nearest_neighbours
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.artifacts import features_extractor
from diffaudit.stages.base import Rejected, StageContext
from diffaudit.store import save_array, save_json

CURVE_KEY = "irs/distinct_curve.png"
EARLY_KEY = "irs/early_rejection.json"
EARLY_NEAREST_KEY = "irs/early_nearest_training.npy"


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
        raise InvalidInput(
            f"the dataset has {dataset.info.count} items: too few to hold out irs.heldout_fraction = "
            f"{spec.irs.heldout_fraction} of them; raise it or upload a dataset with a held-out split"
        )
    return IRSSplit(np.flatnonzero(~mask), np.flatnonzero(mask), "seeded")


def distinct_trajectory(nn_indices: np.ndarray) -> np.ndarray:
    """Distinct nearest training images after each sample, in generation order."""
    nn = np.asarray(nn_indices).ravel()
    is_new = np.zeros(nn.size, dtype=np.int64)
    is_new[np.unique(nn, return_index=True)[1]] = 1
    return np.cumsum(is_new)


def verdict_rule_name(spec: EvaluationSpec) -> str:
    """The rule behind the verdict: the spec's rule with early rejection, else Eq. 9 ("bound" at the end)."""
    return spec.irs.rule if spec.irs.early_rejection else "bound"


class EarlyRejectionMonitor:
    """on_batch of the sample stage: retrieve each batch, update the rule, raise Rejected once it rejects."""

    def __init__(self, ctx: StageContext) -> None:
        spec = ctx.spec
        self.ctx = ctx
        self.extractor = features_extractor(ctx)
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
