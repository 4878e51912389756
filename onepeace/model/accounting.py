"""Parameter counts per component, forward FLOPs per sample, and MFU (kept next to the model)."""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig, to_dict
from ..geometry import audio_frame_count, max_samples_for_frames
from .parameters import component_of

# Standard inputs for FLOP figures: a 256x256 image (257 tokens), 71 text tokens + CLS (72), 15 s audio.
AUDIO_SECONDS = 15.0
SAMPLE_KINDS = ("image", "text", "audio", "image-text", "audio-text")

# Dense bf16 tensor-core peak in TFLOP/s (no sparsity), matched against torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = OrderedDict([
    ("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 125.0), ("RTX 4090", 165.0),
])


def parameter_groups(model: nn.Module) -> "OrderedDict[str, int]":
    """Parameters per component (``model/parameters.py`` names them)."""
    groups: OrderedDict[str, int] = OrderedDict()
    for m in ("image", "audio", "text"):
        groups[f"{m} adapter"] = 0
    groups["shared attention"] = 0
    for m in ("image", "audio", "text"):
        groups[f"{m} relative position table"] = 0
    for m in ("image", "audio", "text"):
        groups[f"{m} FFNs"] = 0
    groups["final norms"] = 0
    groups["heads"] = 0
    groups["decoder"] = 0
    for name, p in model.named_parameters():
        groups[component_of(name)] += p.numel()
    return OrderedDict((k, v) for k, v in groups.items() if v or k in ("shared attention", "heads"))


def vision_branch_params(model: nn.Module) -> int:
    """Vision adapter + shared attention + image relative table + image FFNs + image final norm."""
    total = 0
    for name, p in model.named_parameters():
        group = component_of(name)
        if group in ("image adapter", "shared attention", "image relative position table", "image FFNs") or \
                name.startswith("encoder.final_norm.image."):
            total += p.numel()
    return total


def sample_inputs(config: ModelConfig, kind: str, batch: int = 1, device: str | torch.device = "meta") -> dict:
    """Keyword inputs of ``forward_encoder`` for one of :data:`SAMPLE_KINDS`."""
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown sample kind {kind!r}; expected one of {', '.join(SAMPLE_KINDS)}")
    inputs = {}
    if "text" in kind:
        inputs["text"] = torch.full((batch, config.max_text_tokens), 5, dtype=torch.long, device=device)
    if "image" in kind:
        inputs["image"] = torch.zeros(batch, 3, config.image_size, config.image_size, device=device)
    if "audio" in kind:
        seconds = min(AUDIO_SECONDS, max_samples_for_frames(config.max_audio_frames) / config.sample_rate)
        inputs["audio"] = torch.zeros(batch, int(seconds * config.sample_rate), device=device)
    return inputs


def sample_tokens(config: ModelConfig, kind: str) -> int:
    """Sequence length the fusion encoder sees for one sample of ``kind``."""
    n = 0
    if "text" in kind:
        n += config.max_text_tokens + 1
    if "image" in kind:
        n += config.image_grid**2 + 1
    if "audio" in kind:
        n += audio_frame_count(sample_inputs(config, "audio")["audio"].shape[1]) + 1
    return n


@functools.lru_cache(maxsize=64)
def _forward_flops(config_items: tuple, kind: str) -> int:
    from .onepeace import OnePeace

    config = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config_items})
    config.attention_backend = "math"  # explicit matmuls, so attention FLOPs are counted
    config.compile_encoder = False
    with torch.device("meta"):
        model = OnePeace(config)
    model.to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model.forward_encoder(**sample_inputs(config, kind))
        for modality, o in out.items():
            model.embed(modality, o)
    return int(counter.get_total_flops())


def forward_flops(config: ModelConfig, kind: str) -> int:
    """Forward FLOPs (multiply-add = 2) of one sample through adapters, encoder and heads."""
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in to_dict(config).items()))
    return _forward_flops(items, kind)


def training_flops(config: ModelConfig, kind: str) -> int:
    """Forward + backward: three times the forward (recomputation for checkpointing is not counted)."""
    return 3 * forward_flops(config, kind)


def device_peak_tflops(device: torch.device | str | None = None) -> float | None:
    """Dense bf16 peak of a CUDA device, or None when unknown (CPUs)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None
