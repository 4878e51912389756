"""Modality adapters: raw inputs to token sequences, each starting with its own CLS token."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import value_checks
from ..config import ModelConfig
from ..geometry import AUDIO_CONV_LAYERS, AUDIO_RECEPTIVE_FIELD, audio_frame_count, max_samples_for_frames
from ..ops.norm import layer_norm
from .init import InitScheme
from .position import resize_abs_positions



# (content tokens [B, k, D], their padding [B, k] or None) -> position features to add, [B, k, D]
PositionHook = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class AdapterOutput(NamedTuple):
    tokens: torch.Tensor  # [B, 1 + n, D], CLS first
    padding_mask: torch.Tensor | None  # [B, 1 + n], True = padding; None when the input has no padding mask
    # (images). Text and audio always carry one: deciding that nothing is padded would read device values.
    # Positions still to add to the content tokens (CLS excluded), computed from the tokens a view keeps.
    # The audio adapter leaves its conv position embedding here, so a masked view runs it on its visible
    # frames only, after the masked ones are dropped. None: the tokens already carry their positions.
    positions: PositionHook | None = None

    def with_positions(self) -> "AdapterOutput":
        """The output with positions added over all tokens (the view that keeps everything)."""
        if self.positions is None:
            return self
        content = self.tokens[:, 1:]
        pad = None if self.padding_mask is None else self.padding_mask[:, 1:]
        tokens = torch.cat([self.tokens[:, :1], content + self.positions(content, pad)], dim=1)
        return AdapterOutput(tokens, self.padding_mask)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a channels-first tensor ([B, C, ...])."""

    def __init__(self, channels: int, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.norm = layer_norm(channels, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class FeatureConv(nn.Conv1d):
    """A conv of the audio feature extractor: He-normal weights, as wav2vec 2.0 and the official model."""

    def init_weights(self) -> None:
        nn.init.kaiming_normal_(self.weight)


class PositionConv(nn.Conv1d):
    """A conv of the audio position embedding: PyTorch's default init, bias included (the official model
    leaves these convs as PyTorch makes them)."""

    def init_weights(self) -> None:
        self.reset_parameters()


class VisionAdapter(nn.Module):
    """hMLP stem: three non-overlapping convs (k4s4, k2s2, k2s2), so patches never mix; CLS + absolute
    positions (resizable for other resolutions)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, eps = config.embed_dim, config.layer_norm_eps
        self.image_size = config.image_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, d // 4, kernel_size=4, stride=4), ChannelLayerNorm(d // 4, eps), nn.GELU(),
            nn.Conv2d(d // 4, d // 4, kernel_size=2, stride=2), ChannelLayerNorm(d // 4, eps), nn.GELU(),
            nn.Conv2d(d // 4, d, kernel_size=2, stride=2),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.image_grid**2 + 1, d))
        self.init_scheme = InitScheme.from_config(config)

    def init_weights(self) -> None:
        self.init_scheme.embedding_(self.cls_token)
        self.init_scheme.position_(self.pos_embed)

    @property
    def grid(self) -> int:
        return self.image_size // 16

    def forward(self, images: torch.Tensor) -> AdapterOutput:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a float tensor [B, 3, H, W]; got shape "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalised pixels), got {images.dtype}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}x{self.image_size} (model.image_size); got "
                             f"{images.shape[-2]}x{images.shape[-1]}. Resize them, or call "
                             f"model.resize_image(size) to change the model's resolution")
        x = self.stem(images.to(self.cls_token.dtype)).flatten(2).transpose(1, 2)  # [B, g*g, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return AdapterOutput(x + self.pos_embed, None)

    def resize(self, image_size: int) -> None:
        """Bicubic resampling of the absolute position grid for a new resolution."""
        self.pos_embed = nn.Parameter(resize_abs_positions(self.pos_embed.data, image_size // 16))
        self.image_size = image_size


class AudioAdapter(nn.Module):
    """wav2vec 2.0 conv feature extractor (LayerNorm variant, no conv bias), projection to the model
    width, and a data2vec-2 style convolutional relative position embedding. The CLS token has its own
    learned position; there are no absolute positions.

    :meth:`features` stops before the position convs and hands them on as ``positions``: the views of a
    batch share the expensive feature extractor, and each view runs the cheap position convs on the
    frames it keeps (masked content must not reach visible frames through them). :meth:`forward` is
    both, over all frames."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, d, eps = config.audio_conv_dim, config.embed_dim, config.layer_norm_eps
        layers: list[nn.Module] = []
        in_ch = 1
        for kernel, stride in AUDIO_CONV_LAYERS:
            layers += [FeatureConv(in_ch, c, kernel, stride=stride, bias=False), ChannelLayerNorm(c, eps), nn.GELU()]
            in_ch = c
        self.feature_extractor = nn.Sequential(*layers)
        self.feature_norm = layer_norm(c, eps)
        self.feature_proj = nn.Linear(c, d)
        k, g = config.audio_pos_conv_kernel, config.audio_pos_conv_groups
        self.pos_conv = nn.ModuleList(
            nn.Sequential(PositionConv(d, d, k, padding=k // 2, groups=g),
                          ChannelLayerNorm(d, eps, elementwise_affine=False), nn.GELU())
            for _ in range(config.audio_pos_conv_layers)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, d))
        self.max_frames = config.max_audio_frames
        self.init_scheme = InitScheme.from_config(config)

    def init_weights(self) -> None:
        self.init_scheme.embedding_(self.cls_token)
        self.init_scheme.position_(self.cls_pos)

    def forward(self, waveforms: torch.Tensor, padding_mask: torch.Tensor | None = None) -> AdapterOutput:
        return self.features(waveforms, padding_mask).with_positions()

    def features(self, waveforms: torch.Tensor, padding_mask: torch.Tensor | None = None) -> AdapterOutput:
        """CLS (with its position) + projected conv features; the frame positions are left to ``positions``."""
        if not torch.is_tensor(waveforms) or waveforms.dim() != 2 or not waveforms.is_floating_point():
            raise ValueError("audio must be a float tensor [B, num_samples] of 16 kHz mono waveforms; got "
                             f"{tuple(waveforms.shape) if torch.is_tensor(waveforms) else type(waveforms).__name__}")
        B, S = waveforms.shape
        if padding_mask is not None:
            if padding_mask.shape != waveforms.shape or padding_mask.dtype != torch.bool:
                raise ValueError(f"audio_padding_mask must be a bool tensor of shape {tuple(waveforms.shape)}; "
                                 f"got {padding_mask.dtype} {tuple(padding_mask.shape)}")
            lengths = (~padding_mask).sum(1)
        else:
            lengths = torch.full((B,), S, device=waveforms.device)
        shortest = AUDIO_RECEPTIVE_FIELD if waveforms.is_meta or not value_checks() else int(lengths.min())
        if shortest < AUDIO_RECEPTIVE_FIELD:
            raise ValueError(f"audio sample {int(lengths.argmin())} has {shortest} samples, shorter than the conv "
                             f"stack's receptive field of {AUDIO_RECEPTIVE_FIELD} samples (25 ms at 16 kHz)")
        frames = audio_frame_count(S)
        if frames > self.max_frames:
            raise ValueError(f"audio of {S} samples gives {frames} frames, more than the position tables hold "
                             f"(model.max_audio_frames = {self.max_frames}); crop it to at most "
                             f"{max_samples_for_frames(self.max_frames)} samples")
        x = waveforms.to(self.feature_proj.weight.dtype)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask, 0.0)
        x = self.feature_extractor(x.unsqueeze(1)).transpose(1, 2)  # [B, F, C]
        x = self.feature_proj(self.feature_norm(x))  # [B, F, D]
        frame_pad = None
        if padding_mask is not None:
            frame_lengths = audio_frame_count(lengths)
            frame_pad = torch.arange(frames, device=x.device)[None, :] >= frame_lengths[:, None]
        cls = (self.cls_token + self.cls_pos).expand(B, -1, -1)
        x = torch.cat([cls, x], dim=1)
        if frame_pad is not None:
            frame_pad = F.pad(frame_pad, (1, 0), value=False)
        return AdapterOutput(x, frame_pad, self.conv_positions)

    def conv_positions(self, x: torch.Tensor, frame_pad: torch.Tensor | None) -> torch.Tensor:
        """Relative position features of the frames ``x`` [B, k, D] as they stand side by side; padded
        frames are zeroed before every conv so that a clip's features do not depend on how much padding
        its batch has."""
        keep = None if frame_pad is None else (~frame_pad)[:, None, :].to(x.dtype)
        # A copy, not a view: a view taken under no_grad of features that require grad (the views of a
        # batch share the feature extractor, the unmasked targets run without gradient) would require grad
        # without a grad_fn, which module hooks such as FlopCounterMode's cannot handle.
        h = x.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        for block in self.pos_conv:
            h = block(h if keep is None else h * keep)
        return h.transpose(1, 2)


class TextAdapter(nn.Module):
    """Token and learned absolute position embeddings, with a learned CLS in front (EOS comes with the
    tokens)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.embed_dim
        self.vocab_size, self.pad_id, self.max_tokens = config.vocab_size, config.pad_id, config.max_text_tokens
        self.token_embed = nn.Embedding(config.vocab_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.max_text_tokens + 1, d))
        self.init_scheme = InitScheme.from_config(config)

    def init_weights(self) -> None:
        self.init_scheme.embedding_(self.cls_token)
        self.init_scheme.position_(self.pos_embed)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> AdapterOutput:
        if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError("text tokens must be an integer tensor [B, T]; got "
                             f"{tokens.dtype if torch.is_tensor(tokens) else type(tokens).__name__} "
                             f"{tuple(tokens.shape) if torch.is_tensor(tokens) else ''}")
        B, T = tokens.shape
        if T > self.max_tokens:
            raise ValueError(f"text has {T} tokens, more than the position table holds "
                             f"(model.max_text_tokens = {self.max_tokens}, EOS included)")
        if T == 0:
            raise ValueError("text tokens are empty: every text needs at least its EOS token")
        lo, hi = (0, 0) if tokens.is_meta or not value_checks() else (int(tokens.min()), int(tokens.max()))
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"text token ids must be in [0, {self.vocab_size}) (model.vocab_size); got ids from "
                             f"{lo} to {hi}. Does the tokenizer match the model?")
        if padding_mask is None:
            padding_mask = tokens == self.pad_id
        elif padding_mask.shape != tokens.shape or padding_mask.dtype != torch.bool:
            raise ValueError(f"text_padding_mask must be a bool tensor of shape {tuple(tokens.shape)}; got "
                             f"{padding_mask.dtype} {tuple(padding_mask.shape)}")
        x = self.token_embed(tokens)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed[:, : T + 1]
        pad = F.pad(padding_mask, (1, 0), value=False)
        return AdapterOutput(x, pad)
