"""What a submitted spec needs from its checkpoint, its dataset and the server, checked before the job is stored.

Each stage's needs (diffaudit.stages) are compared with the facts the service stores about the checkpoint
(image size, channels, classes) and the dataset (kind, size, item shape, labels, held-out split), and with the
operator's limits (the weights folder, the work of one batch). A spec that would fail, or run one forward pass
for minutes, later is refused now: a 422 whose message names the field and what to change (details.field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

from app.errors import Invalid
from app.models import Checkpoint, Dataset
from app.settings import Settings
from diffaudit.errors import InvalidInput
from diffaudit.features.registry import extractor_dim, extractor_input_size, extractor_weights_path
from diffaudit.features.weights import InvalidWeights, local_weights_path
from diffaudit.metrics.density import AVG_KNN_K, PRECISION_K
from diffaudit.spec import EvaluationSpec

BATCH_SETTING = "DIFFAUDIT_MAX_BATCH_PIXELS"
MIN_TSNE_POINTS = 4  # openTSNE lowers the perplexity to (n - 1) / 3, which must stay at least 1


class SpecRefused(Invalid):
    code = "invalid_spec"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details={"field": field})


@dataclass(frozen=True)
class Submission:
    """A spec with the facts it is checked against."""

    spec: EvaluationSpec
    checkpoint: Checkpoint
    dataset: Dataset
    settings: Settings

    @property
    def generated_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the checkpoint's images."""
        size = self.checkpoint.sample_size
        return (size, size, self.checkpoint.out_channels)

    @property
    def n_train(self) -> int:
        return self.dataset.count - self.dataset.heldout_count

    @property
    def num_classes(self) -> int | None:
        """Classes of the dataset; None when it is unlabelled."""
        names = self.dataset.class_names
        return None if names is None else len(names)

    @property
    def images(self) -> bool:
        return self.dataset.kind == "images"


def check_submission(spec: EvaluationSpec, checkpoint: Checkpoint, dataset: Dataset, settings: Settings) -> None:
    """Refuse (SpecRefused, a 422) a spec that cannot run on this checkpoint, dataset and server."""
    submission = Submission(spec, checkpoint, dataset, settings)
    check_kind(submission)
    check_class_label(submission)
    check_guidance_scale(submission)
    check_image_shape(submission)
    check_extractors(submission)
    check_batches(submission)
    for stage in spec.stages:
        check = STAGE_CHECKS.get(stage)
        if check is not None:
            check(submission)


# --- every job ---------------------------------------------------------------------------------------


# The stages whose implementation runs only on pixel-space models today, and why (docs/checkpoints.md).
PIXEL_ONLY_STAGES = {
    "novelty": "draws its solver table through the pixel-space sampler",
    "memorization": "measures volume growth by running the denoiser on the training images, which a latent "
    "model would need encoded into its latent space first",
    "membership": "scores training and held-out images by running the denoiser on them, which a latent model "
    "would need encoded into its latent space first",
    "guided": "steers sampling with gradients of pixel-space networks, which a latent model would need through "
    "its decoder",
    "augmentation": "draws its extra samples through the pixel-space sampler",
}
# Volume growth reads the noise prediction straight from the denoiser, which a learned variance doubles.
LEARNED_VARIANCE_UNSUPPORTED = {
    "memorization": "measures volume growth from the denoiser's raw output, and this model also predicts its variance",
    "membership": "scores images from the denoiser's raw output, and this model also predicts its variance",
}


def checkpoint_kind(checkpoint: Checkpoint) -> str:
    """The stored kind (checkpoints recorded before kinds existed are pixel-space UNets)."""
    return str((checkpoint.info or {}).get("kind", "pixel-unet"))


def check_kind(s: Submission) -> None:
    """Refuse a stage that cannot run on the checkpoint's kind yet, saying why and what runs."""
    kind = checkpoint_kind(s.checkpoint)
    learned_variance = bool((s.checkpoint.info or {}).get("learned_variance"))
    refused: dict[str, str] = {}
    for stage in s.spec.stages:
        why = PIXEL_ONLY_STAGES.get(stage) if kind != "pixel-unet" else None
        if why is None and learned_variance:
            why = LEARNED_VARIANCE_UNSUPPORTED.get(stage)
        if why is not None:
            refused[stage] = why
    if refused:
        raise SpecRefused(
            "spec.stages",
            f"stage(s) {list(refused)} do not run on checkpoint {s.checkpoint.id} ({kind}) yet: "
            + "; ".join(f"{stage} {why}" for stage, why in refused.items())
            + ". Remove them (docs/checkpoints.md lists which analyses run on which kind)",
        )


def check_guidance_scale(s: Submission) -> None:
    if s.spec.sample.guidance_scale > 1 and (s.checkpoint.info or {}).get("null_class") is None:
        raise SpecRefused(
            "spec.sample.guidance_scale",
            f"{s.spec.sample.guidance_scale:g} asks for classifier-free guidance, but checkpoint {s.checkpoint.id} "
            "has no null class (only a DiT has one); set it to 1",
        )


def check_class_label(s: Submission) -> None:
    label, classes = s.spec.sample.class_label, s.checkpoint.num_class_embeds
    if label is not None and not classes:
        raise SpecRefused(
            "spec.sample.class_label",
            f"{label} but checkpoint {s.checkpoint.id} is not class-conditional; remove class_label",
        )
    if label is not None and classes and label >= classes:
        raise SpecRefused(
            "spec.sample.class_label",
            f"{label} is out of range: checkpoint {s.checkpoint.id} has {classes} classes (0..{classes - 1})",
        )


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    height, width, channels = shape
    return f"{height}x{width} {channels}-channel images"


def check_image_shape(s: Submission) -> None:
    """Generated and training images are compared pixel for pixel, or embedded alike: their shapes must agree."""
    if s.images and tuple(s.dataset.item_shape) != s.generated_shape:
        raise SpecRefused(
            "dataset_id",
            f"dataset {s.dataset.id} has {_shape_text(s.dataset.item_shape)} but checkpoint {s.checkpoint.id} "
            f"generates {_shape_text(s.generated_shape)}; pick the dataset the model was trained on",
        )


def _check_extractor(s: Submission, field: str, name: str, weights: str | None, weights_field: str) -> None:
    try:
        extractor_weights_path(
            name, weights, weights_dir=s.settings.weights_dir, allow_downloads=s.settings.allow_downloads
        )
    except InvalidInput as exc:
        about_weights = isinstance(exc, InvalidWeights) and weights is not None
        raise SpecRefused(weights_field if about_weights else field, str(exc)) from exc


def check_extractors(s: Submission) -> None:
    """Every extractor and weights file the job's stages will use exists and may be read."""
    stages, spec = s.spec.stages, s.spec
    if "features" in stages:
        features = spec.features
        _check_extractor(s, "spec.features.extractor", features.extractor, features.weights, "spec.features.weights")
        dim = extractor_dim(features.extractor, s.generated_shape)
        if s.dataset.kind == "features" and dim is not None and dim != s.dataset.item_shape[0]:
            raise SpecRefused(
                "spec.features.extractor",
                f"dataset {s.dataset.id} holds {s.dataset.item_shape[0]}-dimensional features but "
                f"{features.extractor!r} gives {dim}-dimensional ones on this checkpoint's images; choose the "
                "extractor that produced the dataset's features",
            )
    if "novelty" in stages:
        for i, choice in enumerate(spec.novelty.extractors):
            field = f"spec.novelty.extractors[{i}]"
            _check_extractor(s, f"{field}.name", choice.name, choice.weights, f"{field}.weights")
    if "guided" in stages:
        guided = spec.guided
        _check_extractor(
            s, "spec.guided.extractor", guided.extractor, guided.extractor_weights, "spec.guided.extractor_weights"
        )
        if guided.classifier_weights is not None:
            check_classifier_weights(s, guided.classifier_weights)


def check_classifier_weights(s: Submission, weights: str) -> None:
    field = "spec.guided.classifier_weights"
    if not weights.lower().endswith(".safetensors"):
        raise SpecRefused(field, "the guidance classifier must be a .safetensors file saved by network_to_bytes")
    try:
        local_weights_path(weights, weights_dir=s.settings.weights_dir)
    except InvalidInput as exc:
        raise SpecRefused(field, str(exc)) from exc


def _batch_values(s: Submission, field: str, batch_size: int, item: tuple[int, ...], per_item: int = 1) -> None:
    """One batch of `batch_size` x `per_item` items of shape `item` must fit the server's per-batch limit."""
    per_image = prod(item) * per_item
    limit = s.settings.max_batch_pixels
    if batch_size * per_image > limit:
        height, width, channels = item
        times = f" x {per_item}" if per_item > 1 else ""
        raise SpecRefused(
            field,
            f"{batch_size} asks for {batch_size}{times} x {height}x{width}x{channels} = {batch_size * per_image:,} "
            f"values in one batch, over this server's limit of {limit:,} ({BATCH_SETTING}); lower it to at most "
            f"{max(1, limit // per_image)}, or ask the operator to raise the limit",
        )


def _extractor_input(name: str, generated: tuple[int, int, int]) -> tuple[int, ...]:
    return (1, 1, 1) if name == "pixels" else extractor_input_size(name, generated)  # pixels runs no network


def check_batches(s: Submission) -> None:
    """Bound the work of one forward pass (the checkpoint's UNet or an extractor's network)."""
    spec, generated, stages = s.spec, s.generated_shape, s.spec.stages
    _batch_values(s, "spec.sample.batch_size", spec.sample.batch_size, generated)
    if "features" in stages:
        names = [spec.features.extractor, *(c.name for c in spec.novelty.extractors if "novelty" in stages)]
        largest = max((_extractor_input(name, generated) for name in names), key=prod)
        _batch_values(s, "spec.features.batch_size", spec.features.batch_size, largest)
    if "guided" in stages:
        largest = max((generated, _extractor_input(spec.guided.extractor, generated)), key=prod)
        _batch_values(s, "spec.guided.batch_size", spec.guided.batch_size, largest)
    if "memorization" in stages:  # volume growth moves each image and its n_axes axes together
        memorization = spec.memorization
        _batch_values(s, "spec.memorization.batch_size", memorization.batch_size, generated, memorization.n_axes + 1)
    if "membership" in stages:  # volume growth moves each image and its axes together, the other scores one image
        membership = spec.membership
        per_item = membership.vg_n_axes + 1 if "volume_growth" in membership.scores else 1
        _batch_values(s, "spec.membership.batch_size", membership.batch_size, generated, per_item)


# --- per stage -----------------------------------------------------------------------------------------


def _need_images(s: Submission, stage: str, why: str) -> None:
    if not s.images:
        raise SpecRefused("dataset_id", f"the {stage} stage {why}; dataset {s.dataset.id} holds features only")


def _need_labels(s: Submission, stage: str) -> int:
    if s.num_classes is None:
        raise SpecRefused(
            "dataset_id",
            f"the {stage} stage needs a labelled dataset (a zip with one folder per class, or an .npz with labels); "
            f"dataset {s.dataset.id} has none",
        )
    return s.num_classes


def _generated_classes(s: Submission) -> int:
    """How many classes the generated samples cover (labels 0..n-1), 0 for an unconditional checkpoint."""
    label, classes = s.spec.sample.class_label, s.checkpoint.num_class_embeds or 0
    return label + 1 if label is not None else classes


def check_irs(s: Submission) -> None:
    if s.dataset.heldout_count:
        return
    fraction, count = s.spec.irs.heldout_fraction, s.dataset.count
    held_out = round(fraction * count)
    if held_out < 1 or held_out >= count:
        raise SpecRefused(
            "spec.irs.heldout_fraction",
            f"dataset {s.dataset.id} has {count} item(s) and no held-out split: holding out {fraction} of them "
            "leaves no held-out or no training item; change it, or upload a larger dataset with a held-out split",
        )


def check_novelty(s: Submission) -> None:
    novelty = s.spec.novelty
    if novelty.extractors and not s.images:
        raise SpecRefused(
            "spec.novelty.extractors",
            f"dataset {s.dataset.id} holds features, so only the features stage's extractor applies; remove it",
        )
    needed = max(MIN_TSNE_POINTS, novelty.knn_k + 1, 2 * (novelty.entropy_k + 1))
    if s.n_train < needed:
        raise SpecRefused(
            "dataset_id",
            f"the novelty stage needs at least {needed} training items (t-SNE, the {novelty.knn_k}-NN support and "
            f"the {novelty.entropy_k}-NN estimates on half-samples); dataset {s.dataset.id} has {s.n_train}",
        )


def check_memorization(s: Submission) -> None:
    memorization = s.spec.memorization
    _need_images(s, "memorization", "runs the model on the training images (volume growth)")
    if memorization.n_neighbours > s.n_train:
        raise SpecRefused(
            "spec.memorization.n_neighbours",
            f"{memorization.n_neighbours} exceeds the {s.n_train} training images of dataset {s.dataset.id}; "
            f"lower it to at most {s.n_train}",
        )
    dim = prod(s.generated_shape)
    if memorization.n_axes > dim:
        raise SpecRefused(
            "spec.memorization.n_axes", f"{memorization.n_axes} exceeds the image dimension {dim}; lower it"
        )


def check_membership(s: Submission) -> None:
    membership = s.spec.membership
    _need_images(s, "membership", "runs the model on training and held-out images")
    if s.dataset.heldout_count < 1 or s.n_train < 1:
        raise SpecRefused(
            "dataset_id",
            f"the membership stage compares training images with held-out images the model never saw: dataset "
            f"{s.dataset.id} has {s.n_train} training and {s.dataset.heldout_count} held-out image(s); upload it "
            "with heldout_fraction > 0 (and mark as held out only images that were NOT used to train the model)",
        )
    dim = prod(s.generated_shape)
    if "volume_growth" in membership.scores and membership.vg_n_axes > dim:
        raise SpecRefused(
            "spec.membership.vg_n_axes", f"{membership.vg_n_axes} exceeds the image dimension {dim}; lower it"
        )
    timesteps = int(s.checkpoint.info.get("num_train_timesteps", 0))
    if timesteps and membership.max_timestep() >= timesteps:
        raise SpecRefused(
            "spec.membership",
            f"the chosen scores query timestep {membership.max_timestep()}, but the checkpoint was trained with "
            f"{timesteps} timesteps (0..{timesteps - 1}); lower the score's timestep",
        )


def check_balance(s: Submission) -> None:
    num_classes = _need_labels(s, "balance")
    _need_images(s, "balance", "trains a classifier on the dataset's images")
    if s.spec.balance.labels == "conditioning":
        if not s.checkpoint.num_class_embeds:
            raise SpecRefused(
                "spec.balance.labels", "'conditioning' needs a class-conditional checkpoint; use 'classifier'"
            )
        if _generated_classes(s) > num_classes:
            raise SpecRefused(
                "spec.balance.labels",
                f"the checkpoint generates {_generated_classes(s)} classes but dataset {s.dataset.id} has "
                f"{num_classes}; use 'classifier' or the dataset the model was trained on",
            )


def check_guided(s: Submission) -> None:
    _need_images(s, "guided", "trains guidance networks on images")
    checkpoint = s.checkpoint
    if checkpoint.in_channels != checkpoint.out_channels:
        raise SpecRefused(
            "checkpoint_id",
            f"the guided stage feeds generated images back to the model: checkpoint {checkpoint.id} takes "
            f"{checkpoint.in_channels} channels and generates {checkpoint.out_channels}",
        )
    if s.dataset.heldout_count < 2:
        raise SpecRefused(
            "dataset_id",
            f"the guided stage compares samples with held-out real images: dataset {s.dataset.id} has "
            f"{s.dataset.heldout_count}; upload it with heldout_fraction > 0 (at least 2 held-out images)",
        )
    needed = max(AVG_KNN_K, PRECISION_K + 1)
    if s.n_train < needed:
        raise SpecRefused(
            "dataset_id",
            f"the guided stage's density metrics (AvgkNN with k = {AVG_KNN_K}, precision with k = {PRECISION_K}) "
            f"need at least {needed} training images; dataset {s.dataset.id} has {s.n_train}",
        )
    if checkpoint.num_class_embeds:
        num_classes = _need_labels(s, "guided")
        if num_classes != checkpoint.num_class_embeds:
            raise SpecRefused(
                "dataset_id",
                f"dataset {s.dataset.id} has {num_classes} classes but checkpoint {checkpoint.id} "
                f"{checkpoint.num_class_embeds}; use the dataset the checkpoint was trained on",
            )


def check_augmentation(s: Submission) -> None:
    num_classes = _need_labels(s, "augmentation")
    _need_images(s, "augmentation", "trains an image classifier")
    if not s.dataset.heldout_count:
        raise SpecRefused(
            "dataset_id",
            f"the augmentation stage evaluates on the held-out split: dataset {s.dataset.id} has none; upload it "
            "with heldout_fraction > 0",
        )
    if not s.checkpoint.num_class_embeds:
        raise SpecRefused(
            "checkpoint_id",
            f"the augmentation stage needs each generated sample's class: checkpoint {s.checkpoint.id} is not "
            "class-conditional (UNet without num_class_embeds)",
        )
    if _generated_classes(s) > num_classes:
        raise SpecRefused(
            "checkpoint_id",
            f"checkpoint {s.checkpoint.id} generates {_generated_classes(s)} classes but dataset {s.dataset.id} has "
            f"{num_classes}; use the dataset the model was trained on",
        )
    minority = s.spec.augmentation.minority_class
    if minority is not None and minority >= num_classes:
        raise SpecRefused(
            "spec.augmentation.minority_class",
            f"{minority} is not one of the {num_classes} classes of dataset {s.dataset.id} (0..{num_classes - 1})",
        )


def check_distribution(s: Submission) -> None:
    """The training split is the reference set: it needs k + 1 rows for its k-NN radii and a full KID subset."""
    distribution = s.spec.distribution
    if distribution.kid_subset_size is not None and distribution.kid_subset_size > s.n_train:
        raise SpecRefused(
            "spec.distribution.kid_subset_size",
            f"{distribution.kid_subset_size} exceeds the {s.n_train} training items of dataset {s.dataset.id}; lower "
            f"it to at most {s.n_train}, or leave it unset",
        )
    if distribution.k + 1 > s.n_train:
        raise SpecRefused(
            "spec.distribution.k",
            f"{distribution.k} needs at least k + 1 training items; dataset {s.dataset.id} has {s.n_train}",
        )


STAGE_CHECKS: dict[str, Callable[[Submission], None]] = {
    "irs": check_irs,
    "novelty": check_novelty,
    "memorization": check_memorization,
    "membership": check_membership,
    "balance": check_balance,
    "guided": check_guided,
    "augmentation": check_augmentation,
    "distribution": check_distribution,
}
