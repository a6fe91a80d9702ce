"""EvaluationSpec: what a job asks for. Frozen, validated, hashable, stored with every job.

ML parameters live here and nowhere else (never in environment variables). Each stage has
its own sub-spec; later stages add theirs. Unknown fields are refused so that a typo in a
request is a 422 that names the field, not a silently ignored parameter.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diffaudit.errors import InvalidInput

SchedulerName = Literal["ddpm", "ddim", "pndm", "dpmsolver++", "unipc", "deis", "euler", "euler-ancestral", "heun"]

# Stages in the order they run. The diversity verdict (irs) comes before the costly analyses, so that a rejected
# checkpoint stops early. Each stage's prerequisites are declared by its sub-spec's `requires()`.
STAGE_ORDER: tuple[str, ...] = (
    "sample",
    "features",
    "irs",
    "distribution",
    "balance",
    "novelty",
    "memorization",
    "membership",
    "guided",
    "augmentation",
)

# Sample i uses seed + i (and a job adds at most a few million to a seed), so a seed below 2^31 keeps every seed
# of a job valid for torch, numpy and scikit-learn alike (numpy's legacy seeds stop at 2^32 - 1).
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _StageSpec(_Frozen):
    """The sub-spec of one stage; `requires()` names the stages it needs, from its own values."""

    def requires(self) -> tuple[str, ...]:
        return ("sample", "features")


class SampleSpec(_StageSpec):
    """The `sample` stage: N samples from the checkpoint with one scheduler."""

    n: int = Field(256, ge=1, le=1_000_000, description="number of samples to draw")
    scheduler: SchedulerName = Field("ddim", description="diffusers scheduler used by the sampling loop")
    steps: int = Field(50, ge=1, le=1000, description="number of denoising steps")
    seed: Seed = Field(0, description="sample i uses the noise of seed + i, whatever the batch size")
    batch_size: int = Field(64, ge=1, le=4096)
    class_label: int | None = Field(
        None, ge=0, description="class-conditional checkpoints: one class, or None to cycle through all classes"
    )
    guidance_scale: float = Field(
        1.0,
        ge=1.0,
        le=100.0,
        description="classifier-free guidance scale (Ho and Salimans, arXiv:2207.12598), as DiTPipeline counts it: "
        "1 = none; > 1 needs a checkpoint with a null class (a DiT)",
    )

    def requires(self) -> tuple[str, ...]:
        return ()


class FeaturesSpec(_StageSpec):
    """The `features` stage: embeddings of generated samples and (cached) training images."""

    extractor: str = Field("random-cnn", description="extractor registry name, e.g. random-cnn, pixels, squeezenet1_1")
    weights: str | None = Field(
        None, description="local weights file on the worker; none = seeded random initialisation"
    )
    seed: Seed = Field(0, description="seed of the random initialisation when no weights are given")
    batch_size: int = Field(256, ge=1, le=4096)

    def requires(self) -> tuple[str, ...]:
        return ("sample",)


class MemorizationSpec(_StageSpec):
    """The `memorization` stage: extraction test, nearest-neighbour distances, volume growth (Hasegawa and Yasuda)."""

    alpha: float = Field(
        0.5, gt=0, le=10, description="extraction test (Hasegawa and Yasuda Eq. 7): alpha; Carlini et al. use 0.5"
    )
    n_neighbours: int = Field(
        50, ge=1, le=10_000, description="extraction test: n nearest training images averaged (Carlini et al.: 50)"
    )
    threshold: float = Field(1.0, gt=0, le=100, description="extraction test: a sample with a ratio below it is a copy")
    space: Literal["pixels", "features", "both"] = Field(
        "pixels", description="distances between pixels, features of the features stage (added to stages), or both"
    )
    n_axes: int = Field(1, ge=1, le=4096, description="volume growth: orthogonal axes N around each training image")
    sigma: float = Field(0.05, gt=0, le=1, description="volume growth: axis radius, in the model's [-1, 1] units")
    n_steps: int = Field(1, ge=1, le=10_000, description="volume growth: ODE steps T (one per training timestep)")
    measure: Literal["volume", "stretch"] = Field(
        "volume", description="volume growth: parallelepiped volume, or raw axis stretches (identical for one axis)"
    )
    seed: Seed = Field(0, description="volume growth: training image i draws its axes from seed + i")
    batch_size: int = Field(64, ge=1, le=4096, description="volume growth: training images per UNet batch")
    return_curve: bool = Field(False, description="volume growth: also store log l_t after every step")
    max_images: int | None = Field(
        None, ge=1, description="volume growth: score the first max_images training images; None = all of them"
    )
    grid_images: int = Field(64, ge=1, le=1024, description="images in the top and bottom volume-growth grids")
    grid_pairs: int = Field(32, ge=1, le=512, description="flagged (generated, training) pairs shown side by side")

    def requires(self) -> tuple[str, ...]:
        """Space features or both reads the features stage's output."""
        return ("sample",) if self.space == "pixels" else ("sample", "features")


MembershipScore = Literal["volume_growth", "denoising_loss", "pia", "secmi"]


class MembershipSpec(_StageSpec):
    """The `membership` stage: membership-inference scores of training against held-out images (AUC, TPR at low
    FPR), with volume growth (Hasegawa and Yasuda), the denoising loss, PIA (Kong et al.) and SecMI (Duan et al.).
    Defaults chosen on the calibration family of docs/membership.md."""

    scores: tuple[MembershipScore, ...] = Field(
        ("denoising_loss",),
        min_length=1,
        max_length=4,
        description="scores computed on the same images; the first one ranks the most exposed training images",
    )
    n_images: int = Field(
        256, ge=2, le=100_000, description="training images and as many held-out images scored (seeded subsets)"
    )
    seed: Seed = Field(0, description="seed of the two subsets and of the denoising loss's noise")
    batch_size: int = Field(64, ge=1, le=4096, description="images per UNet call")
    vg_n_axes: int = Field(1, ge=1, le=4096, description="volume growth: orthogonal axes N around each image")
    vg_sigma: float = Field(0.05, gt=0, le=1, description="volume growth: axis radius, in the model's [-1, 1] units")
    vg_n_steps: int = Field(1, ge=1, le=10_000, description="volume growth: ODE steps T (one per training timestep)")
    loss_timesteps: tuple[Annotated[int, Field(ge=0, le=9_999)], ...] = Field(
        (200,), min_length=1, max_length=16, description="denoising loss: timesteps averaged over"
    )
    loss_draws: int = Field(4, ge=1, le=64, description="denoising loss: seeded noise draws per image and timestep")
    pia_timestep: int = Field(100, ge=1, le=9_999, description="PIA: timestep t of the error (Kong et al.: 200)")
    pia_p: float = Field(4.0, ge=1, le=16, description="PIA: p of the l_p norm (Kong et al.: 4)")
    secmi_timestep: int = Field(100, ge=2, le=9_999, description="SecMI: t_sec (Duan et al.: 100)")
    secmi_interval: int = Field(10, ge=1, le=1000, description="SecMI: DDIM step k (Duan et al.: 10)")
    grid_images: int = Field(32, ge=1, le=1024, description="most exposed training images shown in the grid")

    @model_validator(mode="after")
    def _valid(self) -> MembershipSpec:
        if len(set(self.scores)) != len(self.scores):
            raise InvalidInput(f"membership.scores names a score twice: {list(self.scores)}")
        if self.secmi_timestep % self.secmi_interval or self.secmi_timestep < 2 * self.secmi_interval:
            raise InvalidInput("membership.secmi_timestep must be a multiple of secmi_interval and at least twice it")
        return self

    def requires(self) -> tuple[str, ...]:
        """Scores the dataset's images with the checkpoint: no other stage."""
        return ()

    def score_options(self, score: MembershipScore) -> dict[str, object]:
        """The keyword options of diffaudit.metrics.membership.score_function for `score`."""
        if score == "volume_growth":
            return {"n_axes": self.vg_n_axes, "sigma": self.vg_sigma, "n_steps": self.vg_n_steps, "seed": self.seed}
        if score == "denoising_loss":
            return {"timesteps": self.loss_timesteps, "n_draws": self.loss_draws, "seed": self.seed}
        if score == "pia":
            return {"timestep": self.pia_timestep, "p": self.pia_p}
        return {"timestep": self.secmi_timestep, "interval": self.secmi_interval}

    def max_timestep(self) -> int:
        """The largest training timestep the chosen scores query."""
        used = {
            "volume_growth": self.vg_n_steps - 1,
            "denoising_loss": max(self.loss_timesteps),
            "pia": self.pia_timestep,
            "secmi": self.secmi_timestep,
        }
        return max(used[s] for s in self.scores)


GuidanceScale = Annotated[float, Field(ge=0, le=100)]


class GuidedSpec(_StageSpec):
    """The `guided` stage: alpha-beta guided sampling towards low-density regions (Sehwag et al., Sehwag et al.)."""

    alphas: tuple[GuidanceScale, ...] = Field(
        (0.5,), min_length=1, max_length=16, description="scales alpha of the hardness guidance L_g1 (Eq. 7)"
    )
    betas: tuple[GuidanceScale, ...] = Field(
        (0.5,), min_length=1, max_length=16, description="scales beta of the discriminator guidance L_g2 (Eq. 7)"
    )
    grid: bool = Field(
        False, description="every alpha with every beta (Fig. 3 grid image); otherwise the pairs alphas[i], betas[i]"
    )
    tau: float = Field(1.0, gt=0, le=1000, description="temperature of the guiding losses (Eqs. 4 and 6)")
    norm: Literal["linf", "l2"] = Field(
        "l2",
        description="per-sample gradient normalisation: l2 (Algorithm 1's u / ||u||; meets the fidelity target on "
        "small images) or linf (App. A.4's unit l-infinity: every pixel may move as far as the largest, a much "
        "larger step at the same alpha and beta; see docs/guided.md)",
    )
    n: int = Field(256, ge=2, le=1_000_000, description="baseline samples, and guided samples per (alpha, beta) pair")
    scheduler: SchedulerName = Field(
        "ddpm", description="sampler of baseline, guided and discriminator samples (the paper's: DDPM, Eq. 7)"
    )
    steps: int = Field(250, ge=2, le=1000, description="number of denoising steps (the paper samples with 250)")
    seed: Seed = Field(0, description="sample i uses seed + i in every set; also seeds the networks' training")
    batch_size: int = Field(64, ge=1, le=4096)
    classifier_steps: int = Field(2000, ge=1, le=1_000_000, description="training steps of the guidance classifier")
    classifier_weights: str | None = Field(
        None, description="local .safetensors guidance classifier on the worker (diffaudit.guidance format)"
    )
    discriminator_steps: int = Field(2000, ge=1, le=1_000_000, description="training steps of the discriminator")
    discriminator_samples: int | None = Field(
        None,
        ge=2,
        le=10_000_000,
        description="ordinary samples the discriminator learns; None = number of training images",
    )
    extractor: str = Field("random-cnn", description="extractor of the density metrics (independent of the guidance)")
    extractor_weights: str | None = Field(None, description="local weights file of the density extractor")
    extractor_seed: Seed = Field(0, description="seed of the density extractor's random initialisation")

    @model_validator(mode="after")
    def _paired(self) -> GuidedSpec:
        if not self.grid and len(self.alphas) != len(self.betas):
            raise InvalidInput("alphas and betas must have the same length (pairs), or set grid to true")
        return self


class SolverChoice(_Frozen):
    """One sampler of the novelty stage's solver comparison ("The deficit of new information in diffusion models",
    Table 1)."""

    scheduler: SchedulerName = Field(..., description="diffusers scheduler")
    steps: int = Field(..., ge=1, le=1000, description="number of denoising steps")


class ExtractorChoice(_Frozen):
    """One feature extractor of the novelty stage's comparison (same paper, Table 3)."""

    name: str = Field(..., description="extractor registry name, e.g. squeezenet1_1, vgg16, alexnet")
    weights: str | None = Field(None, description="local weights file on the worker; none = seeded random init")


class NoveltySpec(_StageSpec):
    """The `novelty` stage: diverse samples ("The deficit of new information in
    diffusion models", Sec. 3.5, Algorithms 1-2) and the solver comparison."""

    mode: Literal["fixed", "joint"] = Field(
        "fixed",
        description="fixed: one t-SNE of the training features per dataset (cached, same boundary for every "
        "checkpoint), generated points placed into it one by one: fast and comparable across checkpoints, but a "
        "new cluster of generated samples does not form its own island and is often missed (read knn_support "
        "beside it); joint: t-SNE of training and generated features together (the authors' method), per job, "
        "which finds such clusters (see docs/novelty.md)",
    )
    seeds: int = Field(3, ge=1, le=10, description="t-SNE seeds 0..seeds-1; a sample is DS when most seeds say so")
    perplexity: float = Field(30.0, ge=2, le=100, description="t-SNE perplexity")
    pca_dims: int | None = Field(
        None,
        ge=2,
        le=4096,
        description="fixed mode: PCA dimensions before openTSNE; None keeps all (truncating is faster but "
        "hides samples that leave the training support in directions the training set does not vary in)",
    )
    n_iter: int = Field(
        500, ge=50, le=5000, description="fixed mode: openTSNE iterations (plus n_iter / 2 of early exaggeration)"
    )
    transform_iter: int = Field(250, ge=10, le=5000, description="fixed mode: optimisation steps placing new points")
    knn_k: int = Field(3, ge=1, le=100, description="k of the k-NN support detector (outside every k-NN ball)")
    entropy_dims: int = Field(10, ge=1, le=64, description="PCA dimensions of the entropy and KL estimates")
    entropy_k: int = Field(3, ge=1, le=50, description="k of the Kozachenko-Leonenko and KL estimators")
    n_rounds: int = Field(10, ge=2, le=200, description="half-samples of the entropy and KL spread")
    solvers: tuple[SolverChoice, ...] = Field(
        (), max_length=12, description="extra samplers, each drawing sample.n samples from sample.seed (Table 1)"
    )
    extractors: tuple[ExtractorChoice, ...] = Field(
        (), max_length=8, description="extra extractors besides features.extractor (Table 3), seeded with features.seed"
    )
    zip_limit: int = Field(1000, ge=0, le=100_000, description="at most this many DS images in the zip (best first)")

    def min_samples(self) -> int:
        """The fewest samples the stage can measure: two half-samples of entropy_k + 1 points (k-NN estimators)."""
        return 2 * (self.entropy_k + 1)


class AugmentationSpec(_StageSpec):
    """The `augmentation` stage: a classifier trained with and without generated samples and DS ("The deficit of
    new information in diffusion models", Table 2)."""

    seeds: int = Field(3, ge=1, le=20, description="trainings per training set (seeds 0..seeds-1): mean and spread")
    epochs: int = Field(10, ge=1, le=500, description="epochs of every classifier training")
    minority_class: int | None = Field(
        None, ge=0, description="class topped up with generated samples; None = smallest class if < half the largest"
    )
    minority_keep_fraction: float = Field(
        1.0, gt=0, le=1, description="keep this share of minority_class's training images (0.2 = imbalance on purpose)"
    )
    max_extra_samples: int = Field(
        1024, ge=0, le=1_000_000, description="cap on extra minority samples drawn when the job has too few of its DS"
    )

    @model_validator(mode="after")
    def _fraction_needs_class(self) -> AugmentationSpec:
        if self.minority_keep_fraction < 1 and self.minority_class is None:
            raise InvalidInput("minority_keep_fraction below 1 needs minority_class (the class to make a minority)")
        return self

    def requires(self) -> tuple[str, ...]:
        """Trains classifiers with the novelty stage's diverse samples."""
        return ("sample", "features", "novelty")


class IRSSpec(_StageSpec):
    """The `irs` stage: Image Retrieval Score with bounds, early rejection while sampling (Dombrowski et al., Eq.
    9, Sec. 7)."""

    target: float = Field(
        0.5,
        gt=0,
        le=1,
        description="IRS_d: the least IRS_inf a model must reach (unadjusted; the paper's 0.8 is for strong "
        "pretrained features, where the measurement gap is small; see docs/irs.md)",
    )
    metric: Literal["euclidean", "cosine"] = Field("euclidean", description="nearest-neighbour distance (Sec. 10)")
    alpha_e: float = Field(0.05, gt=0, lt=0.5, description="error rate: false rejection of a model at the target")
    early_rejection: bool = Field(True, description="retrieve each batch while sampling and stop once rejected")
    rule: Literal["spending", "sequential", "bound"] = Field(
        "spending",
        description="spending: alpha spent exactly over a look at every early sample (rejects earliest); sequential: "
        "group-sequential test over fixed looks; bound: Eq. 9 with the duplicates bound (never raises the error "
        "rate, rejects late)",
    )
    heldout_fraction: float = Field(
        0.2, gt=0, lt=1, description="datasets without a held-out split: share of items held out (seeded) for IRS_inf,a"
    )
    seed: Seed = Field(0, description="seed of that held-out split")
    grid_images: int = Field(8, ge=1, le=64, description="most retrieved training images shown in the grid")


class BalanceSpec(_StageSpec):
    """The `balance` stage: generated class shares against the training shares (thesis the thesis, Ch. 4)."""

    labels: Literal["classifier", "conditioning"] = Field(
        "classifier",
        description="classifier: classes predicted by a classifier trained on the training split (cached); "
        "conditioning: the class-conditional model's own labels (the classifier checks them: agreement rate)",
    )
    classifier_epochs: int = Field(5, ge=1, le=500, description="epochs of the classifier training")
    seed: Seed = Field(0, description="seed of the classifier's initialisation and batch order")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="joint confidence of the per-class ratio intervals")

    def requires(self) -> tuple[str, ...]:
        return ("sample",)


class DistributionSpec(_StageSpec):
    """The `distribution` stage: FID, KID, precision / recall, density / coverage and Vendi of the generated features
    against the training images' (diffaudit.metrics.distribution), each with a bootstrap interval; FID per class."""

    k: int = Field(3, ge=1, le=100, description="k of the k-NN balls of precision, recall, density, coverage")
    kid_subsets: int = Field(100, ge=1, le=10_000, description="KID: random subsets averaged (torch-fidelity: 100)")
    kid_subset_size: int | None = Field(
        None,
        ge=2,
        le=100_000,
        description="KID: rows per subset and side; None = 1000 (torch-fidelity's), or fewer when a side has fewer",
    )
    bootstrap: int = Field(100, ge=0, le=10_000, description="bootstrap replicates of the ball metrics and KID")
    moment_bootstrap: int = Field(
        10, ge=0, le=1000, description="bootstrap replicates of FID and Vendi (two d x d moments per replicate)"
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="level of every bootstrap interval")
    per_class: bool = Field(True, description="FID per class when the dataset and the samples have labels")
    seed: Seed = Field(0, description="seed of the KID subsets and the bootstrap")

    def check_sample_count(self, n: int) -> None:
        """InvalidInput naming the field when `n` generated rows cannot be measured: k-NN radii need k + 1 rows and a
        KID subset kid_subset_size rows."""
        if self.kid_subset_size is not None and self.kid_subset_size > n:
            raise InvalidInput(
                f"distribution.kid_subset_size {self.kid_subset_size} exceeds the {n} samples (sample.n): lower it, "
                "leave it unset (1000 or the number of samples), or raise sample.n"
            )
        if self.k + 1 > n:
            raise InvalidInput(
                f"distribution.k {self.k} needs at least k + 1 samples, got {n}: lower it or raise sample.n"
            )


class EvaluationSpec(_Frozen):
    version: Literal[1] = 1
    stages: tuple[str, ...] = Field(("sample", "features"), description="stages to run; prerequisites are added")
    sample: SampleSpec = SampleSpec()
    features: FeaturesSpec = FeaturesSpec()
    memorization: MemorizationSpec = MemorizationSpec()
    membership: MembershipSpec = MembershipSpec()
    guided: GuidedSpec = GuidedSpec()
    augmentation: AugmentationSpec = AugmentationSpec()
    novelty: NoveltySpec = NoveltySpec()
    irs: IRSSpec = IRSSpec()
    balance: BalanceSpec = BalanceSpec()
    distribution: DistributionSpec = DistributionSpec()

    @field_validator("stages", mode="before")
    @classmethod
    def _known_stages(cls, requested: object) -> object:
        """A non-empty list of known stage names (a 422 naming the mistake, never a TypeError)."""
        if isinstance(requested, str) or not isinstance(requested, (list, tuple)):
            raise InvalidInput("stages must be a list of stage names")
        if not requested:
            raise InvalidInput(f"stages must name at least one of {list(STAGE_ORDER)}")
        unknown = [s for s in requested if not isinstance(s, str) or s not in STAGE_ORDER]
        if unknown:
            raise InvalidInput(f"unknown stage(s) {unknown}; known stages: {list(STAGE_ORDER)}")
        return requested

    @model_validator(mode="after")
    def _close_stages(self) -> EvaluationSpec:
        """Add the prerequisites each requested stage's sub-spec names, in running order; check what they need."""
        object.__setattr__(self, "stages", close_stages(self))  # frozen: set once, while validating
        if "novelty" in self.stages and self.sample.n < self.novelty.min_samples():
            raise InvalidInput(
                f"the novelty stage needs at least {self.novelty.min_samples()} samples with novelty.entropy_k = "
                f"{self.novelty.entropy_k} (its entropy and KL spreads use half-samples of entropy_k + 1 points "
                f"or more): raise sample.n or lower novelty.entropy_k"
            )
        if "distribution" in self.stages:
            self.distribution.check_sample_count(self.sample.n)
        return self

    def spec_hash(self) -> str:
        """Content hash of the normalised spec (same request -> same hash)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def close_stages(spec: EvaluationSpec) -> tuple[str, ...]:
    """spec.stages with every prerequisite their sub-specs name (`requires()`), in STAGE_ORDER."""
    needed: set[str] = set()
    todo = list(spec.stages)
    while todo:
        stage = todo.pop()
        if stage not in needed:
            needed.add(stage)
            todo.extend(getattr(spec, stage).requires())
    return tuple(s for s in STAGE_ORDER if s in needed)
