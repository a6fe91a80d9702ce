"""Checks of a checkpoint's JSON configs, before anything is built from them.

A config from an upload is untrusted: diffusers builds whatever it describes, so a negative channel
count crashes torch, `norm_num_groups: 0` divides by zero and 200,000 channels ask for terabytes.
Every field a component reads is checked against a rule (type, sign, range; `true` is not a number),
then the fields that must agree with each other are compared. A kind of component is a table of
rules plus a function of cross-field checks; more kinds are more tables.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from diffusers.models.unets.unet_2d import UNet2DModel

from diffaudit.errors import InvalidInput

MAX_CHANNELS = 1 << 16  # sanity bound on any channel count; the parameter limit bounds the model itself
MAX_BLOCKS = 8
MAX_LAYERS_PER_BLOCK = 32
MAX_CLASSES = 1_000_000
MAX_TRAIN_TIMESTEPS = 100_000
MAX_SHOWN_CHARS = 80


class InvalidCheckpoint(InvalidInput):
    """The checkpoint cannot be used; the message tells the user what to fix."""


class Rule(Protocol):
    """What a config field may hold."""

    def accepts(self, value: Any) -> bool: ...
    def describe(self) -> str: ...


def is_number(value: Any) -> bool:
    """An int or a finite float, but not a bool (JSON's true would otherwise count as 1)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer:
    minimum: int
    maximum: int

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.minimum <= value <= self.maximum

    def describe(self) -> str:
        return f"an integer from {self.minimum:,} to {self.maximum:,}"


@dataclass(frozen=True)
class Number:
    minimum: float
    maximum: float
    above_minimum: bool = False  # True: the minimum itself is excluded

    def accepts(self, value: Any) -> bool:
        if not is_number(value) or value > self.maximum:
            return False
        return bool(value > self.minimum if self.above_minimum else value >= self.minimum)

    def describe(self) -> str:
        return f"a number {'>' if self.above_minimum else '>='} {self.minimum:g} and <= {self.maximum:g}"


@dataclass(frozen=True)
class Boolean:
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str | None, ...]

    def accepts(self, value: Any) -> bool:
        return (value is None or isinstance(value, str)) and value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(json.dumps(choice) for choice in self.choices)


@dataclass(frozen=True)
class ListOf:
    item: Rule
    min_length: int
    max_length: int

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, list | tuple)
            and self.min_length <= len(value) <= self.max_length
            and all(self.item.accepts(v) for v in value)
        )

    def describe(self) -> str:
        return f"a list of {self.min_length} to {self.max_length} items, each {self.item.describe()}"


@dataclass(frozen=True)
class Nullable:
    rule: Rule

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def describe(self) -> str:
        return f"null or {self.rule.describe()}"


def shown(value: Any) -> str:
    """A config value as JSON, cut short (a list may be long)."""
    text = json.dumps(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def check_fields(config: Mapping[str, Any], rules: Mapping[str, Rule], what: str) -> None:
    """Refuse the first field of `config` its rule does not accept (absent fields take the class's default).

    `what` opens the message, e.g. "unet/config.json does not describe a valid UNet2DModel".
    """
    for field, rule in rules.items():
        if field in config and not rule.accepts(config[field]):
            raise InvalidCheckpoint(f"{what}: {field} is {shown(config[field])}; it must be {rule.describe()}")


def with_defaults(config: Mapping[str, Any], component_class: type) -> dict[str, Any]:
    """The config with every constructor argument it leaves out set to the class's default."""
    parameters = inspect.signature(component_class).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **config}


# ---------------------------------------------------------------- UNet2DModel

CHANNELS = Integer(1, MAX_CHANNELS)
UNET_2D_DOWN_BLOCKS = (
    "DownBlock2D",
    "AttnDownBlock2D",
    "ResnetDownsampleBlock2D",
    "SkipDownBlock2D",
    "AttnSkipDownBlock2D",
)
UNET_2D_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D")
UNET_2D_RULES: dict[str, Rule] = {
    "in_channels": CHANNELS,
    "out_channels": CHANNELS,
    "center_input_sample": Boolean(),
    "time_embedding_type": OneOf(("positional", "fourier", "learned")),
    "time_embedding_dim": Nullable(CHANNELS),
    "freq_shift": Number(0, 1),
    "flip_sin_to_cos": Boolean(),
    "down_block_types": ListOf(OneOf(UNET_2D_DOWN_BLOCKS), 1, MAX_BLOCKS),
    "mid_block_type": OneOf(("UNetMidBlock2D", None)),
    "up_block_types": ListOf(OneOf(UNET_2D_UP_BLOCKS), 1, MAX_BLOCKS),
    "block_out_channels": ListOf(CHANNELS, 1, MAX_BLOCKS),
    "layers_per_block": Integer(1, MAX_LAYERS_PER_BLOCK),
    "mid_block_scale_factor": Number(0, 100, above_minimum=True),
    "downsample_padding": Integer(0, 4),
    "downsample_type": OneOf(("conv", "resnet")),
    "upsample_type": OneOf(("conv", "resnet")),
    "dropout": Number(0, 1),
    "act_fn": OneOf(("silu", "swish", "mish", "gelu", "relu")),
    "attention_head_dim": Nullable(CHANNELS),
    "norm_num_groups": CHANNELS,
    "attn_norm_num_groups": Nullable(CHANNELS),
    "norm_eps": Number(0, 1, above_minimum=True),
    "resnet_time_scale_shift": OneOf(("default", "scale_shift")),
    "add_attention": Boolean(),
    "class_embed_type": OneOf((None, "timestep", "identity")),
    "num_class_embeds": Nullable(Integer(1, MAX_CLASSES)),
    "num_train_timesteps": Nullable(Integer(1, MAX_TRAIN_TIMESTEPS)),
}


def check_unet_2d_config(config: Mapping[str, Any], name: str) -> None:
    """Every field of a UNet2DModel config, then the fields that must agree; InvalidCheckpoint naming the field."""
    class_name = config.get("_class_name")
    if class_name != UNet2DModel.__name__:
        raise InvalidCheckpoint(
            f"{name} describes a {class_name!r}, not a 'UNet2DModel': only unconditional or "
            "class-conditional UNet2DModel denoisers are supported in unet/ (a DiT goes in transformer/)"
        )
    what = f"{name} does not describe a valid UNet2DModel"
    check_fields(config, UNET_2D_RULES, what)
    full = with_defaults(config, UNet2DModel)
    channels, down, up = full["block_out_channels"], full["down_block_types"], full["up_block_types"]
    if not len(channels) == len(down) == len(up):
        raise InvalidCheckpoint(
            f"{what}: block_out_channels, down_block_types and up_block_types must have the same length; "
            f"found {len(channels)}, {len(down)} and {len(up)}"
        )
    for field in ("norm_num_groups", "attn_norm_num_groups"):
        groups = full[field]
        if groups is not None and any(c % groups for c in channels):
            raise InvalidCheckpoint(
                f"{what}: every entry of block_out_channels {shown(channels)} must be divisible by {field} ({groups})"
            )
    check_attention_heads(full, what)
    check_output_channels(full["in_channels"], full["out_channels"], name)
    if full["time_embedding_type"] == "learned" and full["num_train_timesteps"] is None:
        raise InvalidCheckpoint(f"{what}: time_embedding_type 'learned' needs num_train_timesteps")


def check_output_channels(in_channels: int, out_channels: int, name: str) -> None:
    """A denoiser predicts the noise (in_channels), or the noise and a learned variance (2 * in_channels)."""
    if out_channels not in (in_channels, 2 * in_channels):
        raise InvalidCheckpoint(
            f"{name}: out_channels ({out_channels}) must equal in_channels ({in_channels}), or twice it for a "
            "model that also predicts its variance (ADM's learned variance, DiT's learned sigma)"
        )


def check_attention_heads(full: Mapping[str, Any], what: str) -> None:
    """Each attention block has channels // attention_head_dim heads: at least one."""
    head_dim = full["attention_head_dim"]
    if head_dim is None:  # one head per block
        return
    channels = list(full["block_out_channels"])
    attention_channels = [c for c, block in zip(channels, full["down_block_types"], strict=True) if "Attn" in block]
    attention_channels += [
        c for c, block in zip(channels[::-1], full["up_block_types"], strict=True) if "Attn" in block
    ]
    if full["mid_block_type"] is not None and full["add_attention"]:
        attention_channels.append(channels[-1])
    if attention_channels and min(attention_channels) < head_dim:
        raise InvalidCheckpoint(
            f"{what}: attention_head_dim ({head_dim}) is larger than the {min(attention_channels)} channels "
            "of an attention block, which would have no head; lower it"
        )


# ---------------------------------------------------------------- noise schedule

BETA = Number(0, 1, above_minimum=True)
SCHEDULER_RULES: dict[str, Rule] = {
    "num_train_timesteps": Integer(1, MAX_TRAIN_TIMESTEPS),
    "beta_start": BETA,
    "beta_end": BETA,
    "beta_schedule": OneOf(("linear", "scaled_linear", "squaredcos_cap_v2")),
    "trained_betas": Nullable(ListOf(BETA, 1, MAX_TRAIN_TIMESTEPS)),
    "prediction_type": OneOf(("epsilon", "v_prediction", "sample")),
    "variance_type": Nullable(
        OneOf(("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"))
    ),
    "clip_sample": Boolean(),
    "clip_sample_range": Number(0, 1e6, above_minimum=True),
    "set_alpha_to_one": Boolean(),
    "steps_offset": Integer(0, MAX_TRAIN_TIMESTEPS - 1),
    "timestep_spacing": OneOf(("leading", "trailing", "linspace")),
    "thresholding": Boolean(),
    "dynamic_thresholding_ratio": Number(0, 1, above_minimum=True),
    "sample_max_value": Number(0, 1e6, above_minimum=True),
    "rescale_betas_zero_snr": Boolean(),
}


def check_scheduler_fields(config: Mapping[str, Any], name: str) -> None:
    """Every field of a scheduler config, then the ones that must agree; InvalidCheckpoint naming the field."""
    what = f"{name} does not describe a usable noise schedule"
    check_fields(config, SCHEDULER_RULES, what)
    steps = config.get("num_train_timesteps", 1000)
    betas = config.get("trained_betas")
    if betas is not None and len(betas) != steps:
        raise InvalidCheckpoint(f"{what}: trained_betas has {len(betas)} values for num_train_timesteps {steps}")
    if config.get("steps_offset", 0) >= steps:
        raise InvalidCheckpoint(f"{what}: steps_offset must be less than num_train_timesteps ({steps})")


# ---------------------------------------------------------------- autoencoders (AutoencoderKL, VQModel)

AUTOENCODER_RULES: dict[str, Rule] = {
    "in_channels": CHANNELS,
    "out_channels": CHANNELS,
    "down_block_types": ListOf(OneOf(("DownEncoderBlock2D",)), 1, MAX_BLOCKS),
    "up_block_types": ListOf(OneOf(("UpDecoderBlock2D",)), 1, MAX_BLOCKS),
    "block_out_channels": ListOf(CHANNELS, 1, MAX_BLOCKS),
    "layers_per_block": Integer(1, MAX_LAYERS_PER_BLOCK),
    "act_fn": OneOf(("silu", "swish", "mish", "gelu", "relu")),
    "latent_channels": CHANNELS,
    "norm_num_groups": CHANNELS,
    "sample_size": Nullable(Integer(1, MAX_CHANNELS)),
    "scaling_factor": Number(0, 1e6, above_minimum=True),
    "shift_factor": OneOf((None,)),  # SD3/Flux latents; diffaudit decodes latents / scaling_factor only
    "latents_mean": OneOf((None,)),
    "latents_std": OneOf((None,)),
    "force_upcast": Boolean(),
    "use_quant_conv": Boolean(),
    "use_post_quant_conv": Boolean(),
    "mid_block_add_attention": Boolean(),
    # VQModel
    "num_vq_embeddings": Integer(1, MAX_CLASSES),
    "vq_embed_dim": Nullable(CHANNELS),
    "norm_type": OneOf(("group", "spatial")),
    "lookup_from_codebook": Boolean(),
}


def check_autoencoder_config(config: Mapping[str, Any], component_class: type, name: str) -> None:
    """Every field of an AutoencoderKL or VQModel config, then the fields that must agree."""
    what = f"{name} does not describe a valid {component_class.__name__}"
    check_fields(config, AUTOENCODER_RULES, what)
    full = with_defaults(config, component_class)
    channels, down, up = full["block_out_channels"], full["down_block_types"], full["up_block_types"]
    if not len(channels) == len(down) == len(up):
        raise InvalidCheckpoint(
            f"{what}: block_out_channels, down_block_types and up_block_types must have the same length; "
            f"found {len(channels)}, {len(down)} and {len(up)}"
        )
    groups = full["norm_num_groups"]
    if any(c % groups for c in channels):
        raise InvalidCheckpoint(
            f"{what}: every entry of block_out_channels {shown(channels)} must be divisible by "
            f"norm_num_groups ({groups})"
        )


def autoencoder_latent_channels(config: Mapping[str, Any], component_class: type) -> int:
    """Channels of the latents the decoder takes: a VQModel's vq_embed_dim when set, else latent_channels."""
    full = with_defaults(config, component_class)
    return int(full.get("vq_embed_dim") or full["latent_channels"])


def autoencoder_downsampling(config: Mapping[str, Any], component_class: type) -> int:
    """How many image pixels one latent pixel spans on a side: each block but the last halves the image."""
    return int(2 ** (len(with_defaults(config, component_class)["block_out_channels"]) - 1))


# ---------------------------------------------------------------- DiT (DiTTransformer2DModel, Transformer2DModel)

DIT_RULES: dict[str, Rule] = {
    "num_attention_heads": Integer(1, 1024),
    "attention_head_dim": CHANNELS,
    "in_channels": CHANNELS,
    "out_channels": Nullable(CHANNELS),
    "num_layers": Integer(1, 256),
    "dropout": Number(0, 1),
    "norm_num_groups": CHANNELS,
    "attention_bias": Boolean(),
    "sample_size": Integer(1, MAX_CHANNELS),
    "patch_size": Integer(1, 64),
    "activation_fn": OneOf(("gelu", "gelu-approximate", "geglu", "geglu-approximate")),
    "num_embeds_ada_norm": Integer(1, MAX_CLASSES),
    "upcast_attention": Boolean(),
    "norm_type": OneOf(("ada_norm_zero",)),
    "norm_elementwise_affine": Boolean(),
    "norm_eps": Number(0, 1, above_minimum=True),
    # Transformer2DModel as DiTPipeline saves it: the DiT configuration of a general class
    "cross_attention_dim": OneOf((None,)),
    "num_vector_embeds": OneOf((None,)),
    "caption_channels": OneOf((None,)),
    "use_additional_conditions": OneOf((None,)),
    "use_linear_projection": Boolean(),
    "only_cross_attention": Boolean(),
    "double_self_attention": Boolean(),
    "attention_type": OneOf(("default",)),
    "interpolation_scale": Nullable(Number(0, 1e6, above_minimum=True)),
}


def check_dit_config(config: Mapping[str, Any], component_class: type, name: str) -> None:
    """Every field of a DiT config (Peebles and Xie, arXiv:2212.09748), then the fields that must agree."""
    what = f"{name} does not describe a valid class-conditional DiT ({component_class.__name__})"
    check_fields(config, DIT_RULES, what)
    full = with_defaults(config, component_class)
    for field in ("sample_size", "patch_size", "num_embeds_ada_norm"):
        if full.get(field) is None:
            raise InvalidCheckpoint(f"{what}: {field} must be set")
    if full["norm_type"] != "ada_norm_zero":
        raise InvalidCheckpoint(f'{what}: norm_type is {shown(full["norm_type"])}; it must be "ada_norm_zero"')
    if full["sample_size"] % full["patch_size"]:
        raise InvalidCheckpoint(
            f"{what}: sample_size ({full['sample_size']}) must be divisible by patch_size ({full['patch_size']})"
        )
    check_output_channels(full["in_channels"], dit_out_channels(full), name)


def dit_out_channels(config: Mapping[str, Any]) -> int:
    """A DiT's output channels: out_channels, or in_channels when it is null."""
    return int(config.get("out_channels") or config["in_channels"])
