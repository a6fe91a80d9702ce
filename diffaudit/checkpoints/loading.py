"""Load a diffusers checkpoint safely: safetensors only, every component checked explicitly.

The layout says the kind (layout.py): a pixel-space UNet2DModel, a latent UNet2DModel with its
autoencoder (VQModel or AutoencoderKL), or a class-conditional DiT with its AutoencoderKL; the
scheduler config is `scheduler/scheduler_config.json` (a flat UNet folder keeps it beside config.json).

Nothing is allocated before it is bounded: the configs' fields are checked first (configs.py), then
how the components fit (latent channels, image size, learned variance); each model is then built on
torch's meta device (no memory) and run once there on one input of its size, which proves it can run
and counts the parameters of all components against the limit; each weights file's tensor names and
shapes are compared with its model's from the safetensors header alone. Only then are the weights
read with `safetensors` and put into the models with `load_state_dict(strict=True)`, so nothing is
silently skipped, initialised at random or unpickled (from_pretrained would fall back on .bin files
and tolerate some missing keys).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffaudit.checkpoints.configs import (
    InvalidCheckpoint,
    autoencoder_downsampling,
    autoencoder_latent_channels,
    check_autoencoder_config,
    check_dit_config,
    check_scheduler_fields,
    check_unet_2d_config,
    dit_out_channels,
    with_defaults,
)
from diffaudit.checkpoints.layout import (
    CONFIG_NAME,
    MODEL_INDEX_NAME,
    PICKLE_SUFFIXES,
    SCHEDULER_CONFIG_NAME,
    WEIGHTS_NAME,
    ComponentFiles,
    Kind,
    Layout,
    component_class,
    detect_layout,
    pickle_files_message,
    read_id2label,
    read_json_object,
)

# The files a checkpoint consists of, at the top of its folder or one folder down; an upload keeps only these.
CHECKPOINT_FILE_NAMES = frozenset({MODEL_INDEX_NAME, CONFIG_NAME, SCHEDULER_CONFIG_NAME, WEIGHTS_NAME})
DOWNLOADS_SETTING = "DIFFAUDIT_ALLOW_DOWNLOADS"
MAX_NAMES_SHOWN = 5
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
DEFAULT_MAX_PARAMETERS = 1_000_000_000
DEFAULT_MAX_IMAGE_SIDE = 1024
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


@dataclass(frozen=True)
class CheckpointLimits:
    """Resource bounds a checkpoint must keep before it is built (the service passes its settings)."""

    max_parameters: int = DEFAULT_MAX_PARAMETERS
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE


@dataclass(frozen=True)
class CheckpointInfo:
    """What the checks established about a checkpoint, JSON-able.

    sample_size, in_channels and out_channels describe the images the model produces (for a latent
    model, the decoder's; for learned variance, the image's channels, not the denoiser's output);
    latent_shape is (channels, height, width) of what the denoiser denoises (the image itself for
    pixel-unet). num_class_embeds is the number of classes (a DiT's num_embeds_ada_norm); null_class
    the label of classifier-free guidance's unconditional input, when the model has one.
    """

    content_hash: str
    num_parameters: int
    sample_size: int
    in_channels: int
    out_channels: int
    num_class_embeds: int | None
    prediction_type: str
    num_train_timesteps: int
    scheduler_class: str | None
    kind: Kind = "pixel-unet"
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # folder -> {"class", "num_parameters"}
    latent_shape: list[int] | None = None
    image_size: int | None = None
    learned_variance: bool = False
    null_class: int | None = None
    scaling_factor: float | None = None
    id2label: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        return cls(**data)


@dataclass
class Checkpoint:
    """A loaded checkpoint: its denoiser and autoencoder (eval mode, on their device) and its noise schedule."""

    denoiser: torch.nn.Module  # UNet2DModel, DiTTransformer2DModel or Transformer2DModel
    scheduler_config: dict[str, Any]
    info: CheckpointInfo
    autoencoder: torch.nn.Module | None = None  # AutoencoderKL or VQModel of a latent model

    @property
    def unet(self) -> UNet2DModel:
        """The pixel-space UNet, for the analyses that run only on pixel-unet checkpoints."""
        if self.info.kind != "pixel-unet" or not isinstance(self.denoiser, UNet2DModel):
            raise InvalidCheckpoint(
                f"this analysis runs on pixel-space UNet checkpoints only, and this checkpoint is a {self.info.kind}; "
                "remove the stage (docs/checkpoints.md lists which analyses run on which kind)"
            )
        return self.denoiser


@dataclass(frozen=True)
class Component:
    """A component built on the meta device, with what its checks established."""

    files: ComponentFiles
    skeleton: torch.nn.Module

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.skeleton.parameters())


def checkpoint_members(paths: Sequence[PurePosixPath]) -> list[PurePosixPath]:
    """The entries of a checkpoint zip that a checkpoint consists of; refuses pickle files by name.

    Kept: configs, safetensors weights and model_index.json (CHECKPOINT_FILE_NAMES), at the top of
    the checkpoint folder or one folder down, below one folder wrapping all of them if there is one.
    """
    pickles = sorted(p.as_posix() for p in paths if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidCheckpoint(pickle_files_message(pickles))
    candidates = [p for p in paths if p.name in CHECKPOINT_FILE_NAMES]
    wrapped = len({p.parts[0] for p in candidates}) == 1 and all(len(p.parts) > 1 for p in candidates)
    max_depth = 3 if wrapped else 2
    return [p for p in candidates if len(p.parts) <= max_depth]


def content_hash(layout: Layout) -> str:
    """sha256 over the sorted relative paths and bytes of the files the model is made of."""
    digest = hashlib.sha256()
    for path in layout.model_files():
        digest.update(layout.name(path).encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def square_sample_size(config: dict[str, Any], name: str) -> int:
    """A denoiser's sample_size as one int (square inputs only)."""
    size = config.get("sample_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InvalidCheckpoint(
            f"{name}: sample_size must be a positive integer (square images), found {json.dumps(size)}"
        )
    return size


def check_image_side(latent_side: int, downsampling: int, name: str, limits: CheckpointLimits | None) -> int:
    """The side of the images the model produces (latent side x the autoencoder's downsampling), within the limit."""
    side = latent_side * downsampling
    if limits is not None and side > limits.max_image_side:
        images = (
            "" if downsampling == 1 else f" gives {side:,}-pixel images (x{downsampling} in the autoencoder), which"
        )
        raise InvalidCheckpoint(
            f"{name}: sample_size {latent_side:,}{images} is larger than this server's limit of "
            f"{limits.max_image_side:,} pixels on a side"
        )
    return side


def meta_skeleton(component_class: Any, config: dict[str, Any], name: str, run: Any, what: str) -> torch.nn.Module:
    """The component built on the meta device (no memory), after `run(model)` there; InvalidCheckpoint if either fails.

    The pass runs shapes only; it refuses configs that build but cannot run (e.g. a sample_size the
    down- and up-sampling path cannot return to).
    """
    try:
        with torch.device("meta"), torch.no_grad():
            model = component_class.from_config(config)
            run(model)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, RuntimeError, AttributeError) as exc:
        raise InvalidCheckpoint(f"{name} does not describe a {what}: {exc}") from exc
    model.eval()
    return model


def unet_skeleton(config: dict[str, Any], sample_size: int, name: str) -> torch.nn.Module:
    """The UNet2DModel on the meta device, after one forward pass there on one input of its size."""
    labels = None if config.get("num_class_embeds") is None else torch.zeros(1, dtype=torch.long)

    def run(unet: Any) -> None:
        unet(torch.empty(1, unet.config["in_channels"], sample_size, sample_size), torch.zeros(1), class_labels=labels)

    what = f"UNet2DModel that can run on {sample_size}x{sample_size} images"
    return meta_skeleton(UNet2DModel, config, name, run, what)


def dit_skeleton(component_class: type, config: dict[str, Any], sample_size: int, name: str) -> torch.nn.Module:
    """The DiT on the meta device, after one class-conditional forward pass there."""

    def run(dit: Any) -> None:
        x = torch.empty(1, dit.config["in_channels"], sample_size, sample_size)
        dit(x, timestep=torch.zeros(1, dtype=torch.long), class_labels=torch.zeros(1, dtype=torch.long))

    return meta_skeleton(component_class, config, name, run, f"DiT that can run on {sample_size}x{sample_size} latents")


def autoencoder_skeleton(
    component_class: type, config: dict[str, Any], latent_shape: tuple[int, int, int], name: str
) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The autoencoder on the meta device and the (C, H, W) its decoder makes of one latent of latent_shape."""
    decoded: list[tuple[int, ...]] = []

    def run(autoencoder: Any) -> None:
        decoded.append(tuple(autoencoder.decode(torch.empty(1, *latent_shape)).sample.shape[1:]))

    what = f"{component_class.__name__} that can decode {'x'.join(map(str, latent_shape))} latents"
    return meta_skeleton(component_class, config, name, run, what), decoded[0]


def check_parameter_count(components: dict[str, Component], limits: CheckpointLimits | None) -> int:
    """The parameters of all components, within the server's limit."""
    total = sum(c.num_parameters for c in components.values())
    if limits is not None and total > limits.max_parameters:
        what = (
            "the UNet"
            if len(components) == 1
            else "the model (" + ", ".join(f"{c.files.folder}: {c.num_parameters:,}" for c in components.values()) + ")"
        )
        raise InvalidCheckpoint(
            f"{what} has {total:,} parameters, more than this server's limit of "
            f"{limits.max_parameters:,}; upload a smaller model"
        )
    return total


def read_safetensors_shapes(weights: Path, name: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the weights file's JSON header, without reading any tensor."""
    unreadable = f"{name} is not a readable safetensors file"
    size = weights.stat().st_size
    with weights.open("rb") as f:
        header_bytes = int.from_bytes(f.read(8), "little")
        if size < 8 or header_bytes > min(size - 8, MAX_HEADER_BYTES):
            raise InvalidCheckpoint(f"{unreadable}: its header length is invalid")
        try:
            header = json.loads(f.read(header_bytes))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidCheckpoint(f"{unreadable}: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise InvalidCheckpoint(f"{unreadable}: its header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise InvalidCheckpoint(f"{unreadable}: tensor {key!r} has no valid shape")
        shapes[key] = tuple(shape)
    return shapes


def check_weights_match(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], folder: str = ""
) -> None:
    """The weights' tensor names and shapes are the model's, or InvalidCheckpoint naming the differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: weights {found[k]} vs config {expected[k]}"
        for k in set(expected) & set(found)
        if found[k] != expected[k]
    )
    problems = [
        f"{len(names)} {what} (first: {names[:MAX_NAMES_SHOWN]})"
        for what, names in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if names
    ]
    if problems:
        where = f"{folder}/ " if folder else ""
        raise InvalidCheckpoint(
            f"{where}weights do not match config.json: " + "; ".join(problems) + ". Check that config.json and the "
            "safetensors file come from the same model."
        )


def read_weights(weights: Path, name: str) -> dict[str, torch.Tensor]:
    """The safetensors state dict, refusing NaN or infinite values."""
    try:
        state = load_file(weights)
    except SafetensorError as exc:
        raise InvalidCheckpoint(f"{name} is not a readable safetensors file: {exc}") from exc
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidCheckpoint(f"{name}: tensor {key!r} contains NaN or infinite values")
    return state


def load_weights(skeleton: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The meta-device model with the weights as its tensors (cast to the model's dtypes), strictly.

    A model with buffers outside its state dict (DiT's fixed positional embedding) is built on the CPU
    instead, so they hold their values; its weights are then loaded strictly over the initial ones.
    """
    dtypes = {key: tensor.dtype for key, tensor in skeleton.state_dict().items()}
    weights = {key: tensor.to(dtypes[key]) for key, tensor in state.items()}
    if any(name not in dtypes for name, _ in skeleton.named_buffers()):
        model: torch.nn.Module = type(skeleton).from_config(skeleton.config)  # type: ignore[attr-defined]
        model.load_state_dict(weights, strict=True)
        return model
    skeleton.load_state_dict(weights, strict=True, assign=True)
    return skeleton


def check_scheduler_config(config: dict[str, Any], name: str) -> None:
    """The scheduler config's fields are in range and build the schedulers the sampler uses."""
    from diffaudit.checkpoints.schedulers import make_scheduler

    check_scheduler_fields(config, name)
    try:
        make_scheduler("ddim", config)
    except (TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise InvalidCheckpoint(f"{name} does not describe a usable noise schedule: {exc}") from exc


@dataclass(frozen=True)
class Denoiser:
    """The denoiser's config checked, with what it establishes: latent (C, H, W), classes, learned variance."""

    files: ComponentFiles
    component_class: type
    config: dict[str, Any]
    latent_shape: tuple[int, int, int]
    num_classes: int | None
    null_class: int | None
    learned_variance: bool

    def skeleton(self, name: str) -> torch.nn.Module:
        size = self.latent_shape[1]
        if self.component_class is UNet2DModel:
            return unet_skeleton(self.config, size, name)
        return dit_skeleton(self.component_class, self.config, size, name)


def check_denoiser(layout: Layout, scheduler_config: dict[str, Any]) -> Denoiser:
    """The denoiser's config, field by field, and its learned variance against the noise schedule."""
    files = layout.denoiser
    name = layout.name(files.config)
    config = read_json_object(files.config, layout.root)
    cls = component_class(config, files.folder, name)
    size = square_sample_size(config, name)
    if cls is UNet2DModel:
        check_unet_2d_config(config, name)
        full = with_defaults(config, UNet2DModel)
        in_channels, out_channels, classes, null = (
            full["in_channels"],
            full["out_channels"],
            full["num_class_embeds"],
            None,
        )
    else:
        check_dit_config(config, cls, name)
        full = with_defaults(config, cls)
        in_channels, out_channels = full["in_channels"], dit_out_channels(full)
        classes = full["num_embeds_ada_norm"]
        null = classes  # DiT's label embedding keeps one more row for the dropped label (arXiv:2212.09748, Sec. 3.2)
    learned_variance = out_channels == 2 * in_channels
    variance_type = scheduler_config.get("variance_type")
    if learned_variance and cls is UNet2DModel and variance_type not in LEARNED_VARIANCE_TYPES:
        raise InvalidCheckpoint(
            f"{name}: out_channels ({out_channels}) is twice in_channels, a learned variance, but "
            f"{layout.name(layout.scheduler_config)} has variance_type {json.dumps(variance_type)}; "
            f"set it to one of {list(LEARNED_VARIANCE_TYPES)}"
        )
    return Denoiser(files, cls, config, (in_channels, size, size), classes, null, learned_variance)


@dataclass(frozen=True)
class Autoencoder:
    """The autoencoder's config checked, and the image (C, side) its decoder makes of the denoiser's latents."""

    files: ComponentFiles
    component_class: type
    config: dict[str, Any]
    downsampling: int
    image_channels: int
    scaling_factor: float


def check_autoencoder(layout: Layout, denoiser: Denoiser) -> Autoencoder | None:
    """The autoencoder's config, field by field, and its fit with the denoiser's latents."""
    files = layout.autoencoder
    if files is None:
        return None
    name = layout.name(files.config)
    config = read_json_object(files.config, layout.root)
    cls = component_class(config, files.folder, name)
    check_autoencoder_config(config, cls, name)
    latent_channels = autoencoder_latent_channels(config, cls)
    if latent_channels != denoiser.latent_shape[0]:
        field = "vq_embed_dim" if config.get("vq_embed_dim") else "latent_channels"
        raise InvalidCheckpoint(
            f"{name}: {field} is {latent_channels}, but {layout.name(denoiser.files.config)} denoises "
            f"{denoiser.latent_shape[0]}-channel latents (in_channels); they must be equal"
        )
    full = with_defaults(config, cls)
    return Autoencoder(
        files,
        cls,
        config,
        autoencoder_downsampling(config, cls),
        int(full["out_channels"]),
        float(full["scaling_factor"]),
    )


def build_components(
    layout: Layout, denoiser: Denoiser, autoencoder: Autoencoder | None, image_side: int
) -> dict[str, Component]:
    """Every component on the meta device; the decoder must make image_side images of the latents."""
    components = {"denoiser": Component(denoiser.files, denoiser.skeleton(layout.name(denoiser.files.config)))}
    if autoencoder is not None:
        name = layout.name(autoencoder.files.config)
        skeleton, decoded = autoencoder_skeleton(
            autoencoder.component_class, autoencoder.config, denoiser.latent_shape, name
        )
        expected = (autoencoder.image_channels, image_side, image_side)
        if decoded != expected:
            raise InvalidCheckpoint(
                f"{name}: its decoder makes {decoded} images of {denoiser.latent_shape} latents; "
                f"expected {expected} (its downsampling x the latent size)"
            )
        components["autoencoder"] = Component(autoencoder.files, skeleton)
    return components


def load_component(layout: Layout, component: Component) -> torch.nn.Module:
    """The component with its weights: names and shapes from the header first, then strictly loaded."""
    name = layout.name(component.files.weights)
    expected = {key: tuple(tensor.shape) for key, tensor in component.skeleton.state_dict().items()}
    check_weights_match(expected, read_safetensors_shapes(component.files.weights, name), component.files.folder)
    return load_weights(component.skeleton, read_weights(component.files.weights, name)).eval()


def read_checkpoint(path: Path, limits: CheckpointLimits | None) -> Checkpoint:
    """Every check, each before anything it bounds is allocated, then the models with their weights (on the CPU)."""
    layout = detect_layout(path)
    scheduler_config = read_json_object(layout.scheduler_config, layout.root)
    check_scheduler_config(scheduler_config, layout.name(layout.scheduler_config))
    denoiser = check_denoiser(layout, scheduler_config)
    autoencoder = check_autoencoder(layout, denoiser)
    latent_channels, latent_side, _ = denoiser.latent_shape
    downsampling = 1 if autoencoder is None else autoencoder.downsampling
    image_side = check_image_side(latent_side, downsampling, layout.name(denoiser.files.config), limits)
    components = build_components(layout, denoiser, autoencoder, image_side)
    num_parameters = check_parameter_count(components, limits)
    models = {role: load_component(layout, component) for role, component in components.items()}
    image_channels = latent_channels if autoencoder is None else autoencoder.image_channels
    info = CheckpointInfo(
        content_hash=content_hash(layout),
        num_parameters=num_parameters,
        sample_size=image_side,
        in_channels=image_channels,
        out_channels=image_channels,
        num_class_embeds=denoiser.num_classes,
        prediction_type=str(scheduler_config.get("prediction_type", "epsilon")),
        num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        scheduler_class=scheduler_config.get("_class_name"),
        kind=layout.kind,
        components={
            c.files.folder or "unet": {"class": type(c.skeleton).__name__, "num_parameters": c.num_parameters}
            for c in components.values()
        },
        latent_shape=list(denoiser.latent_shape),
        image_size=image_side,
        learned_variance=denoiser.learned_variance,
        null_class=denoiser.null_class,
        scaling_factor=None if autoencoder is None else autoencoder.scaling_factor,
        id2label=read_id2label(layout.model_index, denoiser.num_classes),
    )
    return Checkpoint(
        denoiser=models["denoiser"], scheduler_config=scheduler_config, info=info, autoencoder=models.get("autoencoder")
    )


def validate_checkpoint_dir(path: Path, limits: CheckpointLimits | None = None) -> CheckpointInfo:
    """Check a checkpoint folder completely (layout, configs, fit, limits, weights) and describe it.

    `limits` default to CheckpointLimits(); the service passes the server's.
    """
    return read_checkpoint(path, limits or CheckpointLimits()).info


def load_checkpoint(path: Path, device: torch.device, limits: CheckpointLimits | None = None) -> Checkpoint:
    """The validated checkpoint with its models in eval mode on `device`.

    Without `limits`, parameters and image size are not bounded (a stored checkpoint was bounded
    when it was uploaded); every other check runs.
    """
    checkpoint = read_checkpoint(path, limits)
    checkpoint.denoiser.to(device)
    if checkpoint.autoencoder is not None:
        checkpoint.autoencoder.to(device)
    return checkpoint


def resolve_checkpoint(ref: str, *, allow_downloads: bool, cache_dir: Path) -> Path:
    """A local checkpoint folder, or a Hugging Face hub id downloaded (json + safetensors only) when allowed."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    if local.exists() or ref.startswith((".", "/", "~")):
        raise InvalidCheckpoint(f"checkpoint {ref!r} is not a folder")
    if not allow_downloads:
        raise InvalidCheckpoint(
            f"checkpoint {ref!r} is not a local folder, and downloading it from the Hugging Face hub is disabled; "
            f"set {DOWNLOADS_SETTING}=true to allow downloads, or give the path of a local folder"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors"], cache_dir=cache_dir))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise InvalidCheckpoint(
            f"checkpoint {ref!r} is neither a local folder nor a Hugging Face hub model: {exc}"
        ) from exc
