"""OnePeace: adapters -> fusion encoder -> per-modality heads, plus the pretraining decoder."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Collection, ContextManager

import torch
import yaml
import torch.nn.functional as F
from torch import nn

from ..checks import value_checks
from ..config import MODALITIES, ModelConfig, from_dict, load_yaml, to_dict
from ..ops.attention import AttentionBias, compute_dtype, flex_compiles, resolve_backend
from ..ops.norm import is_layer_norm
from .adapters import AdapterOutput, AudioAdapter, TextAdapter, VisionAdapter
from .decoder import DenoisingDecoder
from .encoder import FusionEncoder
from .outputs import ModalityOutput
from .position import RelativePositionBias, resize_abs_positions

_ADAPTERS = {"text": TextAdapter, "image": VisionAdapter, "audio": AudioAdapter}
LOGIT_SCALE_INIT = math.log(1 / 0.07)
CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.pt"


def _trunc_normal(t: torch.Tensor) -> None:
    nn.init.trunc_normal_(t, std=0.02, a=-0.02, b=0.02)


class OnePeace(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.modalities = [m for m in MODALITIES if m in config.modalities]
        self.adapters = nn.ModuleDict({m: _ADAPTERS[m](config) for m in self.modalities})
        self.rel_bias = RelativePositionBias(config)
        self.encoder = FusionEncoder(
            config.embed_dim, config.depth, config.num_heads, config.ffn_dim, self.modalities,
            config.layer_scale_init, config.drop_path_rate, config.dropout, config.layer_norm_eps,
        )
        self.encoder.checkpoint_activations = config.checkpoint_activations
        self.proj = nn.ModuleDict({m: nn.Linear(config.embed_dim, config.embed_dim) for m in self.modalities})
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))  # 1-D: DeepSpeed broadcasts it as bytes
        self.decoder = DenoisingDecoder(config) if config.decoder_depth > 0 else None
        self.reset_parameters()
        if config.compile_encoder:
            for layer in self.encoder.layers:
                layer.compile()

    # ---------------------------------------------------------------------------------------------
    # Initialisation
    # ---------------------------------------------------------------------------------------------

    def reset_parameters(self, only: Collection[str] | None = None,
                         gather: Callable[[list[nn.Parameter]], ContextManager] | None = None) -> None:
        """Linear and embedding weights: truncated normal (std and cut-off 0.02); all biases 0; LayerNorm 1/0;
        CLS, position and mask tokens like linear weights; relative tables 0; LayerScale at its init;
        the logit scale at ln(1/0.07). ``only``: re-initialise just these parameter names. ``gather``:
        a context that makes the given parameters whole while they are written (ZeRO-3 partitions them);
        the values and the order random numbers are drawn in are the same with or without it."""

        def wanted(name: str) -> bool:
            return only is None or name in only

        gather = gather or (lambda params: contextlib.nullcontext())
        for prefix, module in self.named_modules():
            prefix = f"{prefix}." if prefix else ""
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            direct = list(module.parameters(recurse=False))
            if not direct:
                continue
            with gather(direct):
                if isinstance(module, (nn.Linear, nn.Embedding)) and wanted(prefix + "weight"):
                    _trunc_normal(weight)
                elif is_layer_norm(module) and weight is not None and wanted(prefix + "weight"):
                    nn.init.ones_(weight)
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_layer_norm(module):
                    if isinstance(bias, torch.Tensor) and wanted(prefix + "bias"):
                        nn.init.zeros_(bias)  # conv weights keep PyTorch's fan-in init
        with torch.no_grad():
            for name, param in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if not wanted(name):
                    continue
                with gather([param]):
                    if leaf in ("cls_token", "pos_embed", "cls_pos") or name.startswith("decoder.mask_token"):
                        _trunc_normal(param)
                    elif leaf in ("q_bias", "v_bias") or name.startswith("rel_bias.tables"):
                        param.zero_()
                    elif leaf in ("gamma1", "gamma2"):
                        param.fill_(self.config.layer_scale_init)
                    elif name == "logit_scale":
                        param.fill_(LOGIT_SCALE_INIT)

    # ---------------------------------------------------------------------------------------------
    # Saving and loading
    # ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str, map_location: str | torch.device = "cpu", **runtime: object) -> "OnePeace":
        """A model saved by :meth:`save_pretrained` or ``onepeace-export``. Weights are loaded with
        ``weights_only=True``: no pickled code runs. ``runtime`` overrides fields such as
        ``attention_backend`` that do not change parameters."""
        config_file, weights_file = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
        for f in (config_file, weights_file):
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{path} is not an exported ONE-PEACE model: {os.path.basename(f)} is missing")
        data = load_yaml(config_file)
        config = from_dict(ModelConfig, {**data.get("model", {}), **runtime}, "model")
        model = cls(config)
        state = torch.load(weights_file, map_location=map_location, weights_only=True)
        model.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, path: str, extra: dict | None = None, dtype: torch.dtype | None = None) -> None:
        """``config.yaml`` (the model config plus ``extra``) and ``model.pt`` (a plain state dict)."""
        os.makedirs(path, exist_ok=True)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
                 for k, v in self.state_dict().items()}
        tmp = os.path.join(path, WEIGHTS_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(path, WEIGHTS_FILE))
        with open(os.path.join(path, CONFIG_FILE + ".tmp"), "w", encoding="utf-8") as f:
            yaml.safe_dump({"model": to_dict(self.config), **(extra or {})}, f, sort_keys=False)
        os.replace(os.path.join(path, CONFIG_FILE + ".tmp"), os.path.join(path, CONFIG_FILE))

    # ---------------------------------------------------------------------------------------------
    # Encoder
    # ---------------------------------------------------------------------------------------------

    def backend_for(self, device: torch.device) -> str:
        return resolve_backend(self.config.attention_backend, device.type)

    def forward(self, **inputs: torch.Tensor | None) -> dict[str, ModalityOutput]:
        return self.forward_encoder(**inputs)

    def adapt(
        self,
        *,
        text: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_padding_mask: torch.Tensor | None = None,
    ) -> dict[str, AdapterOutput]:
        """The adapters' outputs (CLS + tokens, padding) for the given modalities. This part of a forward
        does not depend on which tokens a view keeps, so the views of one batch can share it."""
        given = {"text": text, "image": image, "audio": audio}
        out = {}
        for m in MODALITIES:
            if given[m] is None:
                continue
            if m not in self.adapters:
                raise ValueError(f"this model has no {m} branch (model.modalities = {list(self.modalities)})")
            if m == "text":
                out[m] = self.adapters[m](text, text_padding_mask)
            elif m == "audio":
                out[m] = self.adapters[m](audio, audio_padding_mask)
            else:
                out[m] = self.adapters[m](image)
        return out

    def forward_encoder(
        self,
        *,
        text: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        text_keep: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        image_keep: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_padding_mask: torch.Tensor | None = None,
        audio_keep: torch.Tensor | None = None,
        adapted: dict[str, AdapterOutput] | None = None,
    ) -> dict[str, ModalityOutput]:
        """Encode one modality or a pair ``[text, image|audio]``; ``*_keep`` drops masked tokens.

        ``*_keep`` is ``[B, k]`` int64: indices of the visible content tokens (CLS excluded, so 0 is the
        first token), ``-1`` for padding slots. Masked tokens never enter the encoder. ``adapted`` (from
        :meth:`adapt`) replaces the raw inputs, so several views of a batch run the adapters once.
        """
        raw = {"text": text, "image": image, "audio": audio}
        keeps = {"text": text_keep, "image": image_keep, "audio": audio_keep}
        if adapted is None:
            if all(v is None for v in raw.values()):
                raise ValueError("forward_encoder needs at least one of text=, image=, audio= (or adapted=)")
            adapted = self.adapt(text=text, text_padding_mask=text_padding_mask, image=image, audio=audio,
                                 audio_padding_mask=audio_padding_mask)
        elif any(v is not None for v in raw.values()):
            raise ValueError("give forward_encoder raw inputs or adapted=, not both")
        present = [m for m in MODALITIES if m in adapted]
        if not present:
            raise ValueError("forward_encoder needs at least one modality")
        if len(present) == 2 and "text" not in present or len(present) == 3:
            raise ValueError(f"a sample is one modality or a pair [text, image] / [text, audio]; got {present}")
        for m, keep in keeps.items():
            if keep is not None and m not in adapted:
                raise ValueError(f"{m}_keep was given without {m}")
        batch_sizes = {m: adapted[m].tokens.shape[0] for m in present}
        if len(set(batch_sizes.values())) != 1:
            raise ValueError(f"all modalities of a pair need the same batch size; got {batch_sizes}")

        segments, xs, pads, positions, infos = [], [], [], [], []
        for m in present:
            out = adapted[m]
            x, pad, local_pos = self._drop_masked(m, out, keeps[m])
            segments.append((m, x.shape[1]))
            xs.append(x)
            pads.append(pad)
            positions.append(self.rel_bias.global_positions(m, local_pos))
            infos.append((m, keeps[m], out.padding_mask, out.tokens.shape[1]))

        x = torch.cat(xs, dim=1) if len(xs) > 1 else xs[0]
        B, L = x.shape[:2]
        rows = max(p.shape[0] for p in positions)
        positions_t = torch.cat([p.expand(rows, -1) for p in positions], dim=1)
        key_padding = None
        if any(p is not None for p in pads):
            key_padding = torch.cat(
                [p if p is not None else torch.zeros(B, n, dtype=torch.bool, device=x.device)
                 for p, (_, n) in zip(pads, segments)], dim=1)
        backend = self.backend_for(x.device)
        biases = self._layer_biases(positions_t, key_padding, B, L, backend, x)
        y = self.encoder(x, segments, biases, backend)

        outputs, start = {}, 0
        for (m, keep, full_pad, n_full), pad, (_, n) in zip(infos, pads, segments):
            outputs[m] = ModalityOutput(y[:, start : start + n], pad, keep, full_pad, n_full)
            start += n
        return outputs

    def _drop_masked(
        self, modality: str, out: AdapterOutput, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Gather CLS + visible tokens; returns tokens, padding and local positions (0 = CLS)."""
        tokens, pad = out.tokens, out.padding_mask
        B, n1, D = tokens.shape
        if keep is None:
            return tokens, pad, torch.arange(n1, device=tokens.device)[None]
        n = n1 - 1
        if not torch.is_tensor(keep) or keep.dim() != 2 or keep.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{modality}_keep must be an integer tensor [B, k] of visible token indices; got "
                             f"{keep.dtype if torch.is_tensor(keep) else type(keep).__name__}"
                             f" {tuple(keep.shape) if torch.is_tensor(keep) else ''}")
        if keep.shape[0] != B:
            raise ValueError(f"{modality}_keep has batch size {keep.shape[0]}, the {modality} input has {B}")
        if keep.shape[1] > n:
            raise ValueError(f"{modality}_keep keeps {keep.shape[1]} tokens but the {modality} input has only {n}")
        if keep.numel() and not keep.is_meta and value_checks():
            lo, hi = int(keep.min()), int(keep.max())
            if lo < -1 or hi >= n:
                raise ValueError(f"{modality}_keep indices must be in [0, {n}) (or -1 for padding slots); got "
                                 f"values from {lo} to {hi}")
        keep = keep.long()
        idx = keep.clamp(min=0)
        content = tokens[:, 1:].gather(1, idx[..., None].expand(-1, -1, D))
        x = torch.cat([tokens[:, :1], content], dim=1)
        drop_pad = keep < 0
        if pad is not None:
            drop_pad = drop_pad | pad[:, 1:].gather(1, idx)
        new_pad = F.pad(drop_pad, (1, 0), value=False)
        positions = F.pad(idx + 1, (1, 0), value=0)
        return x, new_pad, positions

    def _layer_biases(self, positions, key_padding, B, L, backend, x) -> list[AttentionBias]:
        base = AttentionBias(None, self.rel_bias.index_map, positions, key_padding, B, L)
        depth = len(self.encoder.layers)
        if self.rel_bias.shared:
            bias = base.with_table(self.rel_bias.table())
            bias.prepare(backend, compute_dtype(x), x.device.type)
            return [bias] * depth
        if backend == "flex":
            base.block_mask(flex_compiles(x.device.type))  # shared by the per-layer copies
        return [base.with_table(self.rel_bias.table(i)) for i in range(depth)]

    # ---------------------------------------------------------------------------------------------
    # Heads and the public encode_* API
    # ---------------------------------------------------------------------------------------------

    def embed(self, modality: str, output: ModalityOutput) -> torch.Tensor:
        """L2-normalised embedding: the modality's CLS output through its projection."""
        return F.normalize(self.proj[modality](output.cls).float(), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed("image", self.forward_encoder(image=images)["image"])

    def encode_audio(self, audio: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed("audio", self.forward_encoder(audio=audio, audio_padding_mask=padding_mask)["audio"])

    def encode_text(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed("text", self.forward_encoder(text=tokens, text_padding_mask=padding_mask)["text"])

    def decode(self, outputs: dict[str, ModalityOutput]) -> dict[str, torch.Tensor]:
        """Denoising decoder predictions ``{modality: [B, 1 + n, D]}`` over the full sequences."""
        if self.decoder is None:
            raise ValueError("this model was built without a decoder (model.decoder_depth = 0)")
        device = next(iter(outputs.values())).tokens.device
        return self.decoder(outputs, self.backend_for(device))

    # ---------------------------------------------------------------------------------------------
    # Structural operations
    # ---------------------------------------------------------------------------------------------

    def unshare_rel_bias(self) -> None:
        """One relative position table per layer, copied from the shared one: outputs are unchanged."""
        self.rel_bias.unshare()
        self.config.share_rel_bias = False

    def resize_image(self, image_size: int) -> None:
        """Change the input resolution: resample absolute positions and the 2D relative table."""
        if image_size % 16 or image_size < 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {image_size}")
        if "image" not in self.adapters:
            raise ValueError("this model has no image branch")
        self.adapters["image"].resize(image_size)
        self.config.image_size = image_size
        self.rel_bias.config = self.config
        self.rel_bias.resize_image_grid(image_size // 16)
        if self.decoder is not None:
            pos = self.decoder.pos_embed["image"].data
            self.decoder.pos_embed["image"] = nn.Parameter(resize_abs_positions(pos, image_size // 16))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.checkpoint_activations = enabled
        self.config.checkpoint_activations = enabled
