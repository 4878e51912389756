"""Typed configuration: dataclasses with defaults, named model presets, strict loading.

Configs are data. A YAML recipe or a ``--set a.b=c`` override is turned into these dataclasses by
:func:`from_dict`, which rejects unknown keys and values of the wrong type with a message naming the
key, so a typo fails before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from . import geometry

MODALITIES = ("text", "image", "audio")
INIT_SCHEMES = ("reference", "width_scaled")  # ModelConfig.init_scheme


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Every size and switch of a ONE-PEACE model. Presets live in :data:`MODEL_PRESETS`."""

    # Keys that older files may hold: (the one value still accepted and dropped, or None; why).
    RETIRED_KEYS: ClassVar[dict[str, tuple[Any, str]]] = {
        "patch_size": (geometry.IMAGE_PATCH, "patch_size is no longer a setting: the hMLP stem has a fixed stride of 16"),
        **{key: (None, (f"{key} was replaced by text_rel_buckets / audio_rel_buckets (the official ONE-PEACE "
                        "bucketing, 514 and 1026 rows); a model saved with it has relative tables of another size"))
           for key in ("text_rel_exact", "audio_rel_exact", "rel_log_buckets")},
    }

    # Fusion encoder
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072  # GeGLU inner width (4x embed_dim as in PaLM)
    modalities: tuple[str, ...] = MODALITIES  # branches to build; stage 2 drops "image"
    layer_scale_init: float = 1e-6
    drop_path_rate: float = 0.0  # linearly from 0 at the first layer to this at the last
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    # How Linear weights, embeddings and positions are initialised (model/init.py InitScheme):
    # "reference": ONE-PEACE's truncated normal cut at one std, std init_std (0.02) for every Linear.
    #   Made for widths of 768 and more; at width 64 it is ten times below a fan-in init and
    #   contrastive training stalls (docs/learning.md).
    # "width_scaled": open_clip's per-matrix scheme (std width^-0.5, residual outputs also (2 depth)^-0.5,
    #   embeddings 0.02, positions 0.01), the FFN's Sub-LayerNorm gain starting at the RMS of its input
    #   (0.308). A small-model deviation, used by the tiny preset only: it learned faster than any single
    #   init_std there, and as fast as open_clip (docs/learning.md).
    init_scheme: str = "reference"
    init_std: float = 0.02  # the "reference" scheme's std and cut-off

    # Denoising decoder (pretraining only)
    decoder_dim: int = 768
    decoder_depth: int = 2
    decoder_heads: int = 12
    decoder_ffn_dim: int = 2048

    # Text adapter
    vocab_size: int = 50000
    pad_id: int = 0
    max_text_tokens: int = 71  # 70 tokens + EOS; the adapter prepends CLS

    # Vision adapter (hMLP stem, total stride 16: 16x16-pixel patches)
    image_size: int = 256

    # Audio adapter (wav2vec2-style conv stack, 320 samples per frame at 16 kHz)
    sample_rate: int = 16000
    audio_conv_dim: int = 512
    audio_pos_conv_layers: int = 5
    audio_pos_conv_kernel: int = 19
    audio_pos_conv_groups: int = 16
    max_audio_frames: int = 750  # 15 s

    # Relative position bias
    # Official bucketing: exact within +-(buckets / 2), then (buckets / 2 - 1) log-spaced buckets per side
    # up to distance rel_max_distance - 1; a table holds 2 * buckets - 1 distances + 3 CLS entries.
    text_rel_buckets: int = 256  # 514 rows
    audio_rel_buckets: int = 512  # 1026 rows
    rel_max_distance: int = 1024
    share_rel_bias: bool = True  # one table for all layers; OnePeace.unshare_rel_bias() copies it

    # Implementation
    attention_backend: str = "auto"  # auto | math | sdpa | flex | xformers
    checkpoint_activations: bool = False
    compile_encoder: bool = False

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def image_grid(self) -> int:
        return geometry.image_grid(self.image_size)

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model config: {msg}")

        need(self.embed_dim % self.num_heads == 0,
             f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        need(self.decoder_dim % self.decoder_heads == 0,
             f"decoder_dim ({self.decoder_dim}) must be divisible by decoder_heads ({self.decoder_heads})")
        need(self.embed_dim % 4 == 0, f"embed_dim ({self.embed_dim}) must be divisible by 4 (hMLP stem)")
        need(self.image_size % 16 == 0 and self.image_size >= 16,
             f"image_size must be a positive multiple of 16, got {self.image_size}")
        need(len(self.modalities) > 0, "modalities must name at least one of text, image, audio")
        for m in self.modalities:
            need(m in MODALITIES, f"unknown modality {m!r} in modalities; expected some of {MODALITIES}")
        need(len(set(self.modalities)) == len(self.modalities), f"modalities has duplicates: {self.modalities}")
        need(self.embed_dim % self.audio_pos_conv_groups == 0,
             f"embed_dim ({self.embed_dim}) must be divisible by audio_pos_conv_groups ({self.audio_pos_conv_groups})")
        need(self.audio_pos_conv_kernel % 2 == 1, "audio_pos_conv_kernel must be odd")
        need(0.0 <= self.drop_path_rate < 1.0, f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.attention_backend in ("auto", "math", "sdpa", "flex", "xformers"),
             f"attention_backend must be one of auto, math, sdpa, flex, xformers; got {self.attention_backend!r}")
        need(0 <= self.pad_id < self.vocab_size, f"pad_id ({self.pad_id}) must be a token id below vocab_size")
        need(self.init_std > 0, f"init_std must be positive, got {self.init_std}")
        need(self.init_scheme in INIT_SCHEMES,
             f"init_scheme must be one of {', '.join(INIT_SCHEMES)}, got {self.init_scheme!r}")
        for name in ("text_rel_buckets", "audio_rel_buckets"):
            size = getattr(self, name)
            need(size % 2 == 0 and 4 <= size < self.rel_max_distance,
                 f"{name} must be even, at least 4 and below rel_max_distance ({self.rel_max_distance}); got {size}")
        for name in ("depth", "num_heads", "ffn_dim", "decoder_depth", "decoder_ffn_dim", "max_text_tokens",
                     "max_audio_frames", "audio_conv_dim", "sample_rate"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: for tests and the demo.
    "tiny": dict(
        embed_dim=64, depth=2, num_heads=4, ffn_dim=256,
        decoder_dim=64, decoder_depth=2, decoder_heads=4, decoder_ffn_dim=128,
        vocab_size=1000, image_size=64, audio_conv_dim=32, audio_pos_conv_layers=2,
        audio_pos_conv_groups=4, max_audio_frames=250, layer_scale_init=0.1,
        # open_clip's per-matrix init: the reference's std 0.02 is ten times below fan-in at width 64.
        init_scheme="width_scaled",
    ),
    "base": dict(embed_dim=768, depth=12, num_heads=12, ffn_dim=3072, drop_path_rate=0.1),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, ffn_dim=4096, drop_path_rate=0.2),
    # The paper's model: about 4.0B parameters, vision branch about 1.5B.
    "onepeace-4b": dict(embed_dim=1536, depth=40, num_heads=24, ffn_dim=6144, drop_path_rate=0.4),
}


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """A preset by name, with field overrides."""
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; available: {', '.join(MODEL_PRESETS)}")
    values = {**MODEL_PRESETS[preset], **overrides}
    return from_dict(ModelConfig, values, path="model")


# --------------------------------------------------------------------------------------------------
# Generic strict loading
# --------------------------------------------------------------------------------------------------

T = TypeVar("T")


# A decimal number as people write it, scientific notation included (1e-3, -2.5E+4, .5).
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return value


def _drop_retired(cls: type, data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """Accept a retired key (``cls.RETIRED_KEYS``) only with the value it always had; name why otherwise."""
    retired = getattr(cls, "RETIRED_KEYS", {})
    for key in set(data) & set(retired):
        accepted, why = retired[key]
        if accepted is None or data[key] != accepted:
            raise ConfigError(f"{path + '.' if path else ''}{key}: {why}")
    return {k: v for k, v in data.items() if k not in retired}


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = _drop_retired(cls, data, path)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)}; "
            f"valid keys{' under ' + path if path else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path + ': ' if path else ''}{exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain YAML-safe data (tuples become lists) from a dataclass tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], yaml value of c)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); intermediate mappings are created as needed."""
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(out, keys, value, f"override {text!r}")
    return out


def set_dotted(data: dict[str, Any], keys: Sequence[str], value: Any, where: str) -> None:
    """``data[k0][k1]...[kn] = value`` in place, creating intermediate mappings; ``where`` names the source."""
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ConfigError(f"{where}: {k!r} is not a mapping")
        node = node[k]
    node[keys[-1]] = copy.deepcopy(value)


def load_yaml(path: str) -> dict[str, Any]:
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def resolve_model_config(data: Mapping[str, Any] | None, path: str = "model") -> ModelConfig:
    """A ``model:`` section: an optional ``preset`` name plus field overrides."""
    data = dict(data or {})
    preset = data.pop("preset", None)
    if preset is None:
        return from_dict(ModelConfig, data, path)
    if not isinstance(preset, str):
        raise ConfigError(f"{path}.preset: expected a preset name, got {preset!r}")
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"{path}.preset: unknown preset {preset!r}; available: {', '.join(MODEL_PRESETS)}")
    return from_dict(ModelConfig, {**MODEL_PRESETS[preset], **data}, path)


__all__ = [
    "MODALITIES", "ConfigError", "ModelConfig", "MODEL_PRESETS", "model_config", "from_dict", "to_dict",
    "parse_override", "apply_overrides", "load_yaml", "resolve_model_config",
]
