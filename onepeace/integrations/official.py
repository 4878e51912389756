"""``onepeace-convert-official CKPT OUT_DIR [--bpe-dir DIR]``: a released ONE-PEACE checkpoint -> an export.

The official checkpoint is a fairseq file with the weights under ``"model"``. Every weight is mapped to
this model (the layout facts are in docs/fidelity.md):

- ``self_attn.{q,k,v}_proj`` are joined into the fused ``attn.qkv`` (rows q, k, v), with ``q_bias`` and
  ``v_bias`` kept apart (k has no bias in either model); ``self_attn.ln`` is the Sub-LayerNorm;
- each ``{m}_ffn.0.wi_0`` (the GELU branch) and ``wi_1`` (the linear branch) are joined into ``ffn.{m}.wi``
  in that order; ``{m}_ffn.2`` is the inner LayerNorm, ``{m}_ffn.3`` the output projection;
- relative position tables: the official index is query - key, ours key - query, and the bucket of ``-d``
  is minus the bucket of ``d``, so the distance rows are reversed (1D and 2D); the three CLS rows keep
  their order. One official table per layer (a fine-tuned file) gives unshared tables;
- absolute position tables are cut to this model's lengths (the official text table has 514 rows for
  positions 0..513, CLS first; the decoder's audio table 1026);
- the audio feature extractor's ``embed_audios.0.conv_layers.{i}.{0,2.1}`` become
  ``feature_extractor.{3i, 3i+1}`` and ``embed_positions.{i+1}.0`` become ``pos_conv.{i}.0``;
- the decoder's ``decoder_{m}_embed``, ``{m}_mask_token`` and ``{m}_mask_head`` are its per-modality ends.

The model's size comes from the tensor shapes. A checkpoint without the decoder, the mask tokens, the
projection heads or the logit scale (a released encoder) converts: those parts are freshly initialised
and reported. Any other missing key, and any key this mapping does not know, stops the conversion with
the keys listed. Tensors the official forward never reads (``rp_bucket`` and ``position_idx`` buffers,
fairseq's ``version``, the decoder adapters' unused CLS embeddings, the audio ``mask_embedding``) are
listed as ignored.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import MODALITIES, ConfigError, ModelConfig
from ..data.tokenizer import Tokenizer, TokenizerError, install_gpt2_bpe
from ..model import OnePeace
from ..model.adapters import AUDIO_CONV_LAYERS
from ..train.export import TOKENIZER_DIR, TOKENIZER_SIDECAR

PROG = "onepeace-convert-official"
ENC, DEC = "encoder_wrapper.", "decoder_wrapper."
NUM_SPECIAL = 3  # CLS -> token, token -> CLS, CLS -> CLS: last rows of every official table, same order here
# Our parameters that a released file may lack: they are freshly initialised.
OPTIONAL = ("decoder.", "proj.", "logit_scale")
# Official tensors the official forward never reads.
IGNORED = [re.compile(p) for p in (
    r".*\.rp_bucket$", r".*fusion_model\.version$", r".*image_adapter\.position_idx$",
    r"encoder_wrapper\.audio_adapter\.mask_embedding$",
    r"decoder_wrapper\.(text|image|audio)_adapter\.(cls_embedding|mask_embedding)$",
)]
# Non-tensor objects in fairseq checkpoints (config, meters, numpy scalars) are read as inert placeholders
# from these packages only; anything else that is not a plain tensor container is refused.
PLACEHOLDER_ROOTS = ("fairseq", "omegaconf", "argparse", "numpy", "one_peace")


class ConversionError(ValueError):
    """The checkpoint does not fit the official layout; the message lists the keys."""


# -------------------------------------------------------------------------------------------------
# Reading the file without running pickled code
# -------------------------------------------------------------------------------------------------

def _placeholder(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    cls = type(name, (), {"__init__": lambda self, *a, **k: None, "__setstate__": lambda self, state: None,
                          "__call__": lambda self, *a, **k: None})
    cls.__module__, cls.__qualname__ = module, name
    return cls


def load_official(path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``"model"`` state dict of a fairseq checkpoint, loaded with ``weights_only=True``; returns it and
    the names of the non-tensor classes that were read as placeholders."""
    placeholders: dict[str, type] = {}
    for _ in range(64):
        try:
            with torch.serialization.safe_globals(list(placeholders.values())):
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
            break
        except pickle.UnpicklingError as exc:
            match = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
            name = match.group(1) if match else None
            if name is None or name.split(".")[0] not in PLACEHOLDER_ROOTS or name in placeholders:
                raise ConversionError(f"{path}: cannot be read safely: {str(exc).splitlines()[-1][:300]}") from None
            placeholders[name] = _placeholder(name)
    else:
        raise ConversionError(f"{path}: too many non-tensor classes in the file")
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{path}: expected a fairseq checkpoint with the weights under 'model'")
    return state, sorted(placeholders)


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


# -------------------------------------------------------------------------------------------------
# The size, from the shapes
# -------------------------------------------------------------------------------------------------

def _count(sd: dict, pattern: str, first: int = 0) -> int:
    """How many indices ``first, first + 1, ...`` keys matching ``pattern`` have (no gaps allowed)."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    if found and found != set(range(first, first + len(found))):
        raise ConversionError(f"keys matching {pattern} have gaps in their indices: {sorted(found)}")
    return len(found)


def _need(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise ConversionError(f"cannot infer the model size: the checkpoint has no {key}")
    return sd[key]


def infer_config(sd: dict[str, torch.Tensor], decoder_heads: int | None = None) -> ModelConfig:
    """A ModelConfig with the checkpoint's sizes (lengths and everything not in the shapes: the defaults)."""
    layers = f"{ENC}fusion_model.layers."
    modalities = tuple(m for m in MODALITIES if f"{layers}0.{m}_ffn.0.wi_0.weight" in sd)
    if not modalities:
        raise ConversionError("no encoder_wrapper.fusion_model.layers.0.{text,image,audio}_ffn: "
                              "is this a ONE-PEACE checkpoint?")
    d = _need(sd, f"{layers}0.self_attn.q_proj.weight").shape[0]
    values: dict = {
        "embed_dim": d, "depth": _count(sd, re.escape(layers) + r"(\d+)\."), "modalities": modalities,
        "ffn_dim": sd[f"{layers}0.{modalities[0]}_ffn.0.wi_0.weight"].shape[0],
        "layer_scale_init": 1e-6 if f"{layers}0.gamma_1" in sd else 0.0, "drop_path_rate": 0.0,
    }
    heads = {sd[k].shape[1] for k in sd if re.match(rf"{ENC}\w+_adapter\.rel_pos_table_list\.\d+\.weight$", k)}
    if len(heads) != 1:
        raise ConversionError("cannot infer the number of heads: expected relative position tables "
                              f"(encoder_wrapper.*_adapter.rel_pos_table_list.*), found head counts {sorted(heads)}")
    values["num_heads"] = heads.pop()
    if "text" in modalities:
        values["vocab_size"] = _need(sd, f"{ENC}text_adapter.embed_tokens.weight").shape[0]
        values["pad_id"] = 1  # fairseq's <pad>
        values["text_rel_buckets"] = (_table(sd, "text").shape[0] - NUM_SPECIAL + 1) // 2
    if "image" in modalities:
        grid = math.isqrt(_need(sd, f"{ENC}image_adapter.pos_embed").shape[0] - 1)
        values["image_size"] = 16 * grid
        rows = _table(sd, "image").shape[0]
        if rows != (2 * grid - 1) ** 2 + NUM_SPECIAL:
            raise ConversionError(f"the image relative table has {rows} rows, but a {grid}x{grid} grid (from "
                                  f"image_adapter.pos_embed) needs {(2 * grid - 1) ** 2 + NUM_SPECIAL}")
    if "audio" in modalities:
        a = f"{ENC}audio_adapter."
        convs = _count(sd, re.escape(a + "embed_audios.0.conv_layers.") + r"(\d+)\.0\.weight")
        kernels = tuple(sd[f"{a}embed_audios.0.conv_layers.{i}.0.weight"].shape[-1] for i in range(convs))
        if kernels != tuple(k for k, _ in AUDIO_CONV_LAYERS):
            raise ConversionError(f"audio feature extractor kernels {kernels} differ from the wav2vec 2.0 stack "
                                  f"{tuple(k for k, _ in AUDIO_CONV_LAYERS)} this model builds")
        pos = _need(sd, f"{a}embed_positions.1.0.weight")
        values.update(
            audio_conv_dim=sd[f"{a}embed_audios.0.conv_layers.0.0.weight"].shape[0],
            audio_pos_conv_layers=_count(sd, re.escape(a + "embed_positions.") + r"(\d+)\.0\.weight", first=1),
            audio_pos_conv_kernel=pos.shape[-1], audio_pos_conv_groups=d // pos.shape[1],
            audio_rel_buckets=(_table(sd, "audio").shape[0] - NUM_SPECIAL + 1) // 2,
        )
    rp = [v for k, v in sd.items() if k.startswith(ENC) and k.endswith(".rp_bucket") and "text_adapter" in k]
    if rp:
        values["rel_max_distance"] = rp[0].shape[0]
    counts = {_count(sd, re.escape(f"{ENC}{m}_adapter.rel_pos_table_list.") + r"(\d+)\.weight") for m in modalities}
    if counts == {values["depth"]} and values["depth"] > 1:
        values["share_rel_bias"] = False
    elif counts != {1}:
        raise ConversionError(f"expected one relative table per modality, or one per layer ({values['depth']}); "
                              f"found {sorted(counts)}")
    dec = f"{DEC}fusion_model.layers."
    if f"{dec}0.self_attn.q_proj.weight" in sd:
        dd = sd[f"{dec}0.self_attn.q_proj.weight"].shape[0]
        ffn = next((sd[k].shape[0] for m in MODALITIES if (k := f"{dec}0.{m}_ffn.0.wi_0.weight") in sd), None)
        if ffn is None:
            raise ConversionError(f"the decoder has no feed-forward network ({dec}0.*_ffn)")
        # The decoder has no per-head tensor; the official one keeps the encoder's head width (64).
        values.update(decoder_dim=dd, decoder_depth=_count(sd, re.escape(dec) + r"(\d+)\."), decoder_ffn_dim=ffn,
                      decoder_heads=decoder_heads or max(1, dd // (d // values["num_heads"])))
    elif decoder_heads:
        values["decoder_heads"] = decoder_heads
    try:
        return ModelConfig(**values)
    except ConfigError as exc:
        raise ConversionError(f"the inferred size is not a valid model: {exc}") from None


def _table(sd: dict, modality: str) -> torch.Tensor:
    return _need(sd, f"{ENC}{modality}_adapter.rel_pos_table_list.0.weight")


# -------------------------------------------------------------------------------------------------
# The mapping: our name -> (official names, how to combine them)
# -------------------------------------------------------------------------------------------------

Rule = tuple[list[str], Callable[..., torch.Tensor]]


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t


def _cat(*ts: torch.Tensor) -> torch.Tensor:
    return torch.cat(ts, dim=0)


def _rows(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """An absolute position table cut to ``n`` positions, as ``[1, n, D]``."""
    def cut(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] < n:
            raise ConversionError(f"a position table has {t.shape[0]} rows; this model needs {n}")
        return t[:n].unsqueeze(0)
    return cut


def reverse_distances(table: torch.Tensor) -> torch.Tensor:
    """Official (query - key) table rows -> ours (key - query): the distance rows reversed, the last three
    (CLS) rows kept. Works for 1D tables and for 2D ones, where negating both offsets reverses the
    flattened ``(2g-1)^2`` grid."""
    n = table.shape[-2] - NUM_SPECIAL
    return torch.cat([table[..., :n, :].flip(-2), table[..., n:, :]], dim=-2)


def _layer_rules(rules: dict, ours: str, theirs: str, modalities, layer_scale: bool) -> None:
    a = f"{theirs}self_attn."
    rules[f"{ours}attn.qkv.weight"] = ([f"{a}q_proj.weight", f"{a}k_proj.weight", f"{a}v_proj.weight"], _cat)
    rules[f"{ours}attn.q_bias"] = ([f"{a}q_proj.bias"], _copy)
    rules[f"{ours}attn.v_bias"] = ([f"{a}v_proj.bias"], _copy)
    pairs = {"attn.inner_norm": f"{a}ln", "attn.out_proj": f"{a}out_proj", "attn_norm": f"{theirs}self_attn_layer_norm",
             "ffn_norm": f"{theirs}final_layer_norm"}
    for m in modalities:
        f = f"{theirs}{m}_ffn."
        rules[f"{ours}ffn.{m}.wi.weight"] = ([f"{f}0.wi_0.weight", f"{f}0.wi_1.weight"], _cat)
        pairs.update({f"ffn.{m}.inner_norm": f"{f}2", f"ffn.{m}.fc2": f"{f}3"})
    for mine, official in pairs.items():
        for leaf in ("weight", "bias"):
            rules[f"{ours}{mine}.{leaf}"] = ([f"{official}.{leaf}"], _copy)
    if layer_scale:
        rules[f"{ours}gamma1"] = ([f"{theirs}gamma_1"], _copy)
        rules[f"{ours}gamma2"] = ([f"{theirs}gamma_2"], _copy)


def _module_rules(rules: dict, pairs: dict[str, str], leaves=("weight", "bias")) -> None:
    for mine, official in pairs.items():
        for leaf in leaves:
            rules[f"{mine}.{leaf}"] = ([f"{official}.{leaf}"], _copy)


def mapping(config: ModelConfig) -> dict[str, Rule]:
    """For every parameter of ``OnePeace(config)``: the official keys it is made of and how."""
    c, ms, rules = config, [m for m in MODALITIES if m in config.modalities], {}
    for i in range(c.depth):
        _layer_rules(rules, f"encoder.layers.{i}.", f"{ENC}fusion_model.layers.{i}.", ms, c.layer_scale_init > 0)
    for i in range(c.decoder_depth):
        _layer_rules(rules, f"decoder.blocks.layers.{i}.", f"{DEC}fusion_model.layers.{i}.", ms, False)
    _module_rules(rules, {f"encoder.final_norm.{m}": f"{ENC}fusion_model.{m}_layer_norm" for m in ms})
    _module_rules(rules, {f"decoder.blocks.final_norm.{m}": f"{DEC}fusion_model.{m}_layer_norm" for m in ms})
    _module_rules(rules, {f"proj.{m}": f"{m}_proj" for m in ms})
    _module_rules(rules, {f"decoder.in_proj.{m}": f"decoder_{m}_embed" for m in ms})
    _module_rules(rules, {f"decoder.out_proj.{m}": f"{m}_mask_head" for m in ms})
    rules["logit_scale"] = (["logit_scale"], lambda t: t.reshape(1))
    positions = {"text": c.max_text_tokens + 1, "image": c.image_grid ** 2 + 1, "audio": c.max_audio_frames + 1}
    for m in ms:
        rules[f"decoder.mask_token.{m}"] = ([f"{m}_mask_token"], lambda t: t.reshape(1, 1, -1))
        official_pos = f"{DEC}image_adapter.pos_embed" if m == "image" else f"{DEC}{m}_adapter.embed_positions.weight"
        rules[f"decoder.pos_embed.{m}"] = ([official_pos], _rows(positions[m]))
        tables = [f"{ENC}{m}_adapter.rel_pos_table_list.{i}.weight" for i in range(1 if c.share_rel_bias else c.depth)]
        rules[f"rel_bias.tables.{m}"] = (tables, lambda *ts: reverse_distances(torch.stack(ts) if len(ts) > 1 else ts[0]))
        a, ours = f"{ENC}{m}_adapter.", f"adapters.{m}."
        rules[f"{ours}cls_token"] = ([f"{a}cls_embedding"], _copy)
        if m == "text":
            rules[f"{ours}token_embed.weight"] = ([f"{a}embed_tokens.weight"], _copy)
            rules[f"{ours}pos_embed"] = ([f"{a}embed_positions.weight"], _rows(positions[m]))
        elif m == "image":
            rules[f"{ours}pos_embed"] = ([f"{a}pos_embed"], _rows(positions[m]))
            _module_rules(rules, {f"{ours}stem.{j}": f"{a}embed_images.{j}" for j in (0, 3, 6)})
            _module_rules(rules, {f"{ours}stem.{j}.norm": f"{a}embed_images.{j}.layer_norm" for j in (1, 4)})
        else:
            rules[f"{ours}cls_pos"] = ([f"{a}cls_pos_embed"], _copy)
            for j in range(len(AUDIO_CONV_LAYERS)):
                conv = f"{a}embed_audios.0.conv_layers.{j}."
                rules[f"{ours}feature_extractor.{3 * j}.weight"] = ([f"{conv}0.weight"], _copy)
                _module_rules(rules, {f"{ours}feature_extractor.{3 * j + 1}.norm": f"{conv}2.1"})
            _module_rules(rules, {f"{ours}feature_norm": f"{a}embed_audios.2", f"{ours}feature_proj": f"{a}embed_audios.3"})
            _module_rules(rules, {f"{ours}pos_conv.{j}.0": f"{a}embed_positions.{j + 1}.0"
                                  for j in range(c.audio_pos_conv_layers)})
    return rules


# -------------------------------------------------------------------------------------------------
# Converting
# -------------------------------------------------------------------------------------------------

@dataclass
class Conversion:
    model: OnePeace
    fresh: list[str] = field(default_factory=list)  # our parameters freshly initialised (absent from the file)
    ignored: list[str] = field(default_factory=list)  # official tensors the official forward never reads
    placeholders: list[str] = field(default_factory=list)  # non-tensor classes read as inert placeholders


def convert_state(sd: dict[str, torch.Tensor], decoder_heads: int | None = None) -> Conversion:
    """Build our model from an official state dict (float32), checking that every key is accounted for."""
    config = infer_config(sd, decoder_heads)
    rules = mapping(config)
    with torch.device("meta"):
        model = OnePeace(config)
    own = model.state_dict()
    if set(rules) != set(own):  # a mapping that forgets a parameter is a bug here, not in the file
        raise AssertionError(f"mapping and model differ: {sorted(set(rules) ^ set(own))[:8]}")
    used = {k for names, _ in rules.values() for k in names}
    ignored = sorted(k for k in sd if k not in used and any(p.match(k) for p in IGNORED))
    unknown = sorted(k for k in sd if k not in used and k not in ignored)
    if unknown:
        raise ConversionError(f"{len(unknown)} key(s) of the checkpoint have no place in this model: "
                              + ", ".join(unknown))
    state, fresh, missing = {}, [], []
    for ours, (names, combine) in rules.items():
        absent = [n for n in names if n not in sd]
        if absent:
            (fresh if ours.startswith(OPTIONAL) else missing).append((ours, absent))
            continue
        t = combine(*[sd[n].float() for n in names])
        if t.shape != own[ours].shape:
            raise ConversionError(f"{', '.join(names)} give {ours} the shape {tuple(t.shape)}; this model needs "
                                  f"{tuple(own[ours].shape)}")
        state[ours] = t.contiguous()
    if missing:
        raise ConversionError(f"the checkpoint lacks {sum(len(a) for _, a in missing)} key(s) this model needs: "
                              + ", ".join(k for _, a in missing for k in a))
    model.load_state_dict(state, strict=False, assign=True)
    _materialise(model, [k for k, _ in fresh])
    return Conversion(model, [k for k, _ in fresh], ignored)


def _materialise(model: OnePeace, names: list[str]) -> None:
    """Give the parameters left on the meta device real storage, then their usual initial values."""
    for name in names:
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[leaf] = nn.Parameter(torch.empty(module._parameters[leaf].shape))
    model.reset_parameters(only=set(names))
    left = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise AssertionError(f"parameters without values after conversion: {left[:8]}")


def summarise(fresh: list[str], model: OnePeace) -> list[str]:
    """The freshly initialised parts, by module: ``decoder`` when all of it, else e.g. ``decoder.in_proj.audio``."""
    decoder = [n for n, _ in model.named_parameters() if n.startswith("decoder.")]
    parts = ["decoder"] if decoder and set(decoder) <= set(fresh) else []
    for name in fresh:
        if parts[:1] == ["decoder"] and name.startswith("decoder."):
            continue
        part = name.rpartition(".")[0] if name.endswith((".weight", ".bias")) else name
        if part not in parts:
            parts.append(part)
    return parts


def convert(checkpoint: str, out_dir: str, bpe_dir: str | None = None, dtype: str = "fp32",
            decoder_heads: int | None = None) -> Conversion:
    sd, placeholders = load_official(checkpoint)
    result = convert_state(sd, decoder_heads)
    result.placeholders = placeholders
    extra: dict = {"source": {"official": os.path.abspath(checkpoint),
                              "fresh": summarise(result.fresh, result.model), "ignored": result.ignored}}
    if bpe_dir:
        sidecar = install_gpt2_bpe(bpe_dir, os.path.join(out_dir, TOKENIZER_DIR), max_tokens=70,
                                   name=TOKENIZER_SIDECAR)
        vocab = Tokenizer(sidecar).vocab_size
        if "text" in result.model.config.modalities and vocab > result.model.config.vocab_size:
            raise ConversionError(f"{bpe_dir}/dict.txt gives {vocab} token ids, more than the checkpoint's "
                                  f"{result.model.config.vocab_size} text embeddings: not this model's dictionary")
        extra["tokenizer"] = os.path.join(TOKENIZER_DIR, TOKENIZER_SIDECAR)
    result.model.save_pretrained(out_dir, extra=extra, dtype={"fp32": None, "bf16": torch.bfloat16}[dtype])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the official checkpoint (e.g. one-peace.pt), weights under 'model'")
    p.add_argument("out_dir", help="where the export (config, weights, tokenizer/) is written")
    p.add_argument("--bpe-dir", help="folder with the official encoder.json, vocab.bpe and dict.txt; they go into "
                                     "the export as a gpt2-bpe tokenizer, so onepeace-eval can encode text")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the saved weights")
    p.add_argument("--decoder-heads", type=int, help="attention heads of the decoder (default: decoder width / "
                                                     "the encoder's head width, 12 for the official decoder)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        p.error(f"{args.checkpoint}: no such file")
    try:
        result = convert(args.checkpoint, args.out_dir, args.bpe_dir, args.dtype, args.decoder_heads)
    except (ConversionError, TokenizerError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    c = result.model.config
    print(f"converted {args.checkpoint} -> {os.path.abspath(args.out_dir)}: {c.depth} layers, width {c.embed_dim}, "
          f"{c.num_heads} heads, FFN {c.ffn_dim}, modalities {', '.join(c.modalities)}, "
          f"{sum(p.numel() for p in result.model.parameters()) / 1e6:.1f}M parameters")
    if "text" in c.modalities:
        print(f"text: vocab_size {c.vocab_size}, pad_id {c.pad_id} (set both when training from this export)")
    if result.fresh:
        print("freshly initialised (not in the checkpoint): " + ", ".join(summarise(result.fresh, result.model)))
    if result.ignored:
        print(f"ignored ({len(result.ignored)} tensors the official forward never reads): "
              + ", ".join(result.ignored))
    if result.placeholders:
        print("non-tensor objects read as placeholders: " + ", ".join(result.placeholders))
    if not args.bpe_dir and "text" in c.modalities:
        print("no --bpe-dir: the export has no tokenizer; pass --tokenizer to onepeace-eval", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "Conversion",
    "ConversionError",
    "convert",
    "convert_state",
    "infer_config",
    "load_official",
    "mapping",
    "reverse_distances",
]
