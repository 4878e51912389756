"""OnePeace: adapters -> fusion encoder -> per-modality heads, plus the pretraining decoder."""

from __future__ import annotations

import dataclasses
import math
from typing import Collection

import torch
import torch.nn.functional as F
from torch import nn

from huggingface_hub import ModelHubMixin

from ..checks import value_checks
from ..config import MODALITIES, ModelConfig, from_dict, to_dict
from ..ops.attention import AttentionBias, compute_dtype, flex_compiles, resolve_backend
from .adapters import AdapterOutput, AudioAdapter, TextAdapter, VisionAdapter
from . import hub
from .decoder import DenoisingDecoder
from .encoder import FusionEncoder
from .init import Gather, InitScheme, reset_parameters as reset_model_parameters
from .outputs import ModalityOutput
from .position import RelativePositionBias, resize_abs_positions

_ADAPTERS = {"text": TextAdapter, "image": VisionAdapter, "audio": AudioAdapter}
LOGIT_SCALE_INIT = math.log(1 / 0.07)


class OnePeace(nn.Module, ModelHubMixin, library_name="onepeace", tags=["onepeace", "multimodal"],
               repo_url="https://github.com/OFA-Sys/ONE-PEACE", paper_url="https://arxiv.org/abs/2305.11172"):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        config = dataclasses.replace(config)  # our own copy: structural changes never reach the caller's
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
        # Built under ZeRO-3's zero.Init, the submodules' parameters are already split across the ranks:
        # onepeace.zero3.initialize writes them, gathering one module at a time (same values, same order).
        if not any(hasattr(p, "ds_id") for p in self.parameters()):
            self.reset_parameters()
        if config.compile_encoder:
            for layer in self.encoder.layers:
                layer.compile()

    # ---------------------------------------------------------------------------------------------
    # Initialisation
    # ---------------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        nn.init.constant_(self.logit_scale, LOGIT_SCALE_INIT)

    def reset_parameters(self, only: Collection[str] | None = None, gather: Gather | None = None) -> None:
        """Initialise all parameters, or just those named in ``only`` (to exactly what a fresh model gets;
        the others keep their values). Each module initialises its own (see :mod:`.init`): linear weights,
        embeddings, CLS tokens and positions as ``config.init_scheme`` says (the reference: truncated
        normal, std and cut-off ``config.init_std`` = 0.02; the tiny preset: open_clip's width-scaled
        scheme, docs/learning.md), biases 0, LayerNorm 1/0, conv weights PyTorch's fan-in init; the
        decoder's mask tokens truncated normal 0.02; relative tables 0; LayerScale at its init; the logit
        scale at ln(1/0.07). ``gather``: see :func:`.init.reset_parameters`."""
        reset_model_parameters(self, only, InitScheme.from_config(self.config), gather=gather)

    # ---------------------------------------------------------------------------------------------
    # Saving and loading
    # ---------------------------------------------------------------------------------------------

    # ``from_pretrained(path_or_repo_id, **runtime)`` comes from huggingface_hub's ModelHubMixin: a local
    # export directory or a Hub repository (see model/hub.py for the layout). ``runtime`` overrides fields
    # such as ``attention_backend`` that do not change parameters; ``map_location`` places the weights.

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, config: object = None,
                         map_location: str | torch.device = "cpu", **runtime: object) -> "OnePeace":
        path = hub.local_copy(model_id, revision, cache_dir, force_download, local_files_only, token)
        saved, _ = hub.read_export_config(path)  # ``config`` (the mixin's reading of config.json) is not used
        model = cls(from_dict(ModelConfig, {**to_dict(saved), **runtime}, "model"))
        model.load_state_dict(hub.load_export_state(path, map_location), strict=True)
        return model.eval()

    def save_pretrained(self, save_directory: str, *, extra: dict | None = None, dtype: torch.dtype | None = None,
                        **hub_kwargs: object):
        """``model.safetensors``, ``config.json`` (the model config plus ``extra``: ``tokenizer``, ``source``)
        and a model card; ``dtype`` casts floating-point weights (bf16 exports). ``hub_kwargs`` go to
        ModelHubMixin (``push_to_hub=True, repo_id=...``)."""
        self._export_options = (extra, dtype)
        try:
            return super().save_pretrained(save_directory, **hub_kwargs)
        finally:
            del self._export_options

    def _save_pretrained(self, save_directory) -> None:
        extra, dtype = getattr(self, "_export_options", (None, None))
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                 for k, v in self.state_dict().items()}
        hub.write_export(str(save_directory), self.config, state, extra)

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
        does not depend on which tokens a view keeps, so the views of one batch can share it. Audio stops
        before its conv position embedding, which :meth:`forward_encoder` runs per view on the kept frames."""
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
                out[m] = self.adapters[m].features(audio, audio_padding_mask)
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
        """Gather CLS + visible tokens and add the positions the adapter left to the view (audio: its conv
        position embedding over the visible frames only); returns tokens, padding and local positions
        (0 = CLS)."""
        tokens, pad = out.tokens, out.padding_mask
        B, n1, D = tokens.shape
        if keep is None:
            return out.with_positions().tokens, pad, torch.arange(n1, device=tokens.device)[None]
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
        drop_pad = keep < 0
        if pad is not None:
            drop_pad = drop_pad | pad[:, 1:].gather(1, idx)
        if out.positions is not None:
            content = content + out.positions(content, drop_pad)
        x = torch.cat([tokens[:, :1], content], dim=1)
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
        self.config.image_size = image_size  # our own copy, shared with rel_bias
        self.rel_bias.resize_image_grid(image_size // 16)
        if self.decoder is not None:
            pos = self.decoder.pos_embed["image"].data
            self.decoder.pos_embed["image"] = nn.Parameter(resize_abs_positions(pos, image_size // 16))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.checkpoint_activations = enabled
        self.config.checkpoint_activations = enabled
