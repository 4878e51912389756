"""Why the tiny model learns slowly: contrastive-only training with one candidate changed at a time.

    python benchmarks/learning_ablation.py --corpus DIR --variants baseline,no_sub_ln --steps 300
    python benchmarks/learning_ablation.py --corpus DIR --variants fixed,fixed+patch_stem --steps 200

A name joined with ``+`` applies several candidates together (overrides merged, patches in order).

A plain in-process loop (one process, no DeepSpeed): the model, the contrastive loss through
``bounded_logit_scale``, AdamW with our parameter groups, clipping and warm-up + cosine schedule, batches
drawn from a ``data_tools.make_demo`` corpus held in memory (``benchmarks/_pairs.py``). For each variant it
prints the held-out R@1 both ways at each evaluation step, the mean pairwise cosine of the embeddings
(1.0 = every input embeds the same: the collapse), the logit scale and the gradient norm.
Results are recorded in docs/learning.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))

from benchmarks.peer_open_clip import OpenClip  # noqa: E402
from benchmarks._pairs import Pairs, load_pairs, mean_pairwise_cosine, recall_at  # noqa: E402
from onepeace.config import model_config  # noqa: E402
from onepeace.losses import bounded_logit_scale, contrastive_loss  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402
from onepeace.model.init import RESIDUAL_OUTPUTS, InitScheme  # noqa: E402
from onepeace.train.engine import param_groups  # noqa: E402
from onepeace.train.schedule import cosine_schedule  # noqa: E402


@dataclass
class Variant:
    """One candidate: model config overrides, a change to the built model, the pooling, the logit scale."""

    doc: str
    overrides: dict = field(default_factory=dict)
    patch: Callable[[OnePeace], None] | None = None
    pool: str = "cls"  # cls | eos | mean (text only)
    logit_scale: str = "bounded"  # bounded | plain
    lr: float | None = None
    warmup: int | None = None
    reference_init: bool = True  # start from the reference init, std 0.02 (the tiny preset before the fix)


def _no_sub_ln(where: tuple[str, ...] = ("attn", "ffn")) -> Callable[[OnePeace], None]:
    """No Sub-LayerNorm (Magneto's, inside the attention before its output projection and inside the FFN
    before fc2) in ``where``."""
    def patch(model: OnePeace) -> None:
        for layer in model.encoder.layers:
            if "attn" in where:
                layer.attn.inner_norm = nn.Identity()
            if "ffn" in where:
                for ffn in layer.ffn.values():
                    ffn.inner_norm = nn.Identity()
    return patch


def _ffn_sub_ln_gain(gain: float) -> Callable[[OnePeace], None]:
    """The FFN's Sub-LayerNorm gain initialised to ``gain``. The ``width_scaled`` scheme now starts it at
    0.308, the RMS of its input (model/init.py); 1 is what every other LayerNorm starts at, and what this
    scheme used before."""
    def patch(model: OnePeace) -> None:
        with torch.no_grad():
            for layer in model.encoder.layers:
                for ffn in layer.ffn.values():
                    ffn.inner_norm.weight.fill_(gain)
    return patch


def _untruncated(model: OnePeace) -> None:
    """timm's trunc_normal_(std=0.02) cuts at +-2 (absolute), i.e. a plain normal; ours cuts at one std."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if (p.ndim == 2 and leaf == "weight") or leaf in ("cls_token", "pos_embed", "cls_pos"):
                if "feature_extractor" in name or "stem" in name or "pos_conv" in name:
                    continue
                nn.init.normal_(p, std=0.02)


def _fusion_scaled(model: OnePeace) -> None:
    """Only the fusion layers' matrices as open_clip (the model's ``width_scaled`` scheme; embeddings,
    projections, adapters as ours)."""
    scheme = InitScheme("width_scaled", depth=model.config.depth)
    with torch.no_grad():
        for name, m in model.encoder.named_modules():
            if isinstance(m, nn.Linear):
                scheme.linear_(name, m)


def _embed_scaled(model: OnePeace) -> None:
    """Only the embeddings as open_clip (the ``width_scaled`` scheme's): tokens and CLS normal std 0.02,
    positions 0.01 (the reference cuts both at 0.02)."""
    scheme = InitScheme("width_scaled")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("decoder"):
                continue
            if name.endswith("token_embed.weight") or name.endswith("cls_token"):
                scheme.embedding_(p)
            elif name.endswith("pos_embed"):
                scheme.position_(p)


def _all_but_embed_scaled(model: OnePeace) -> None:
    _fusion_scaled(model)
    _proj_scaled(model)


def _embeddings_at(std: float) -> Callable[[OnePeace], None]:
    """Token, CLS and position embeddings with our truncated normal at ``std`` too."""
    def patch(model: OnePeace) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("token_embed.weight", "cls_token", "pos_embed", "cls_pos")) \
                        and not name.startswith("decoder"):
                    nn.init.trunc_normal_(p, std=std, a=-std, b=std)
    return patch


def _proj_no_bias(model: OnePeace) -> None:
    for m in model.proj.values():
        m.bias.requires_grad_(False)


def _patch_stem(model: OnePeace) -> None:
    """open_clip's image stem: one 16 px patch convolution to the full width (no bias, PyTorch's init), in
    place of the hMLP stem (three convs through width / 4 channels)."""
    d = model.config.embed_dim
    model.adapters["image"].stem = nn.Conv2d(3, d, kernel_size=16, stride=16, bias=False)


def _no_rel_bias(model: OnePeace) -> None:
    """No relative position bias: the tables stay at their initial zeros (absolute positions only, as open_clip)."""
    for p in model.rel_bias.parameters():
        p.requires_grad_(False)


def _depth_scaled_out(model: OnePeace) -> None:
    """The residual branches' output matrices (attention out, FFN fc2) scaled by (2 depth)^-0.5, as open_clip's."""
    factor = (2 * model.config.depth) ** -0.5
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            if name.removesuffix(".weight").endswith(RESIDUAL_OUTPUTS):
                p.mul_(factor)


def _peer_tower(side: str) -> Callable[[OnePeace], None]:
    """open_clip's tower of the same size (``benchmarks/peer_open_clip.py``, its own init) in place of ours
    for one side (``image`` or ``text``: which of our towers holds the model back?) or ``both`` (open_clip
    itself in this loop, with our logit-scale path)."""
    def patch(model: OnePeace) -> None:
        model.peer = OpenClip(model.config.vocab_size)  # not a submodule: it keeps open_clip's optimizer groups
        model.peer_side = side
    return patch


def _unshared_attention(model: OnePeace) -> None:
    """Each modality its own attention and LayerNorms in every fusion layer, as in a two-tower CLIP; ONE-PEACE
    shares them across modalities and keeps only the FFNs apart. The copies start from the same draw.
    Single-modality forwards only (this loop's)."""
    for layer in model.encoder.layers:
        first, *rest = layer.ffn.keys()
        for part in ("attn", "attn_norm", "ffn_norm"):
            shared = getattr(layer, part)
            setattr(layer, f"{part}_by", nn.ModuleDict({first: shared, **{m: copy.deepcopy(shared) for m in rest}}))

        def forward(x, segments, bias, backend, layer=layer, shared_forward=layer.forward):
            (modality, _), = segments
            for part in ("attn", "attn_norm", "ffn_norm"):
                setattr(layer, part, getattr(layer, f"{part}_by")[modality])
            return shared_forward(x, segments, bias, backend)

        layer.forward = forward


def _proj_scaled(model: OnePeace) -> None:
    with torch.no_grad():
        for m in model.proj.values():
            nn.init.normal_(m.weight, std=model.config.embed_dim**-0.5)


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("the tiny preset before the fix: Linear init std 0.02 (LayerScale 0.1, Sub-LN, CLS pooling, "
                        "bounded scale)"),
    "fixed": Variant("the tiny preset as shipped: open_clip's per-matrix init (init_scheme width_scaled)",
                     reference_init=False),
    "init_std_0.25": Variant("Linear init std 0.25 cut at one std (about 64^-0.5; the tiny preset's first fix)",
                             {"init_std": 0.25}),
    "layerscale_1": Variant("LayerScale initialised to 1.0", {"layer_scale_init": 1.0}),
    "no_layerscale": Variant("no LayerScale", {"layer_scale_init": 0.0}),
    "layerscale_1e-6": Variant("LayerScale 1e-6 (base/large/4b)", {"layer_scale_init": 1e-6}),
    "no_sub_ln": Variant("no Sub-LayerNorm inside attention and FFN", patch=_no_sub_ln()),
    "no_attn_sub_ln": Variant("no Sub-LayerNorm inside attention (the FFN keeps its)", patch=_no_sub_ln(("attn",))),
    "ffn_sub_ln_gain_0.3": Variant("the FFN's Sub-LayerNorm gain initialised to 0.3", patch=_ffn_sub_ln_gain(0.3)),
    "ffn_sub_ln_gain_1": Variant("the FFN's Sub-LayerNorm gain initialised to 1 (fixed+this: the tiny preset "
                                 "before its scheme started it at 0.308)", patch=_ffn_sub_ln_gain(1.0)),
    "no_ffn_sub_ln": Variant("no Sub-LayerNorm inside the FFN (attention keeps its)", patch=_no_sub_ln(("ffn",))),
    "untruncated_init": Variant("normal std 0.02 without the one-std truncation", patch=_untruncated),
    "width_scaled_init": Variant("open_clip's width/depth-scaled init", {"init_scheme": "width_scaled"}),
    "proj_scaled_init": Variant("projections std width^-0.5", patch=_proj_scaled),
    "embed_scaled_init": Variant("only the embeddings as open_clip", patch=_embed_scaled),
    "fusion_proj_scaled_init": Variant("fusion matrices and projections as open_clip", patch=_all_but_embed_scaled),
    "proj_no_bias": Variant("projections without a (trainable) bias", patch=_proj_no_bias),
    "fusion_scaled_init": Variant("fusion layer matrices as open_clip, the rest as ours", patch=_fusion_scaled),
    "init_std_0.07": Variant("Linear init std 0.07 (0.02 sqrt(768/64))", {"init_std": 0.07}),
    "init_std_0.125": Variant("Linear init std 0.125 (64^-0.5)", {"init_std": 0.125}),
    "init_std_0.125_all": Variant("Linear and embeddings std 0.125", {"init_std": 0.125}, patch=_embeddings_at(0.125)),
    "eos_pool": Variant("text embedding from the EOS output (open_clip's argmax pooling)", pool="eos"),
    "mean_pool": Variant("text embedding from the mean of the token outputs", pool="mean"),
    "plain_logit_scale": Variant("logit scale used as is (no clamp)", logit_scale="plain"),
    "lr_5e-4": Variant("peak lr 5e-4", lr=5e-4),
    "lr_2e-4": Variant("peak lr 2e-4", lr=2e-4),
    "no_warmup": Variant("no warm-up", warmup=0),
    "patch_stem": Variant("open_clip's stem: one 16 px patch conv instead of the hMLP stem", patch=_patch_stem),
    "no_rel_bias": Variant("no relative position bias (absolute positions only)", patch=_no_rel_bias),
    "peer_image_tower": Variant("open_clip's image tower, our text tower", patch=_peer_tower("image")),
    "peer_text_tower": Variant("open_clip's text tower, our image tower", patch=_peer_tower("text")),
    "open_clip": Variant("open_clip's CLIP of the same size, both towers", patch=_peer_tower("both")),
    "unshared_attention": Variant("attention and its LayerNorms per modality (two towers; ONE-PEACE shares them)",
                                  patch=_unshared_attention),
    "depth_scaled_out": Variant("attention out and fc2 scaled by (2 depth)^-0.5", patch=_depth_scaled_out),
}


def combine(name: str) -> Variant:
    """``a+b+...``: the candidates together. Overrides merge left to right, patches run in order, a
    non-default pooling, logit scale, lr or warm-up wins; the reference init only if every part starts from it."""
    parts = [VARIANTS[n] for n in name.split("+")]
    if len(parts) == 1:
        return parts[0]
    patches = [v.patch for v in parts if v.patch is not None]

    def patch(model: OnePeace) -> None:
        for fn in patches:
            fn(model)

    def pick(attr: str, default):
        return next((getattr(v, attr) for v in parts if getattr(v, attr) != default), default)

    return Variant(" + ".join(v.doc for v in parts), {k: x for v in parts for k, x in v.overrides.items()},
                   patch=patch if patches else None, pool=pick("pool", "cls"),
                   logit_scale=pick("logit_scale", "bounded"), lr=pick("lr", None), warmup=pick("warmup", None),
                   reference_init=all(v.reference_init for v in parts))


def _text_embedding(model: OnePeace, out, padding: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "cls":
        return model.embed("text", out)
    tokens = out.tokens  # [B, 1 + T, D], CLS first
    if pool == "eos":
        last = (~padding).sum(1)  # index of EOS in the CLS-first sequence
        h = tokens[torch.arange(tokens.shape[0]), last]
    else:
        keep = (~padding).to(tokens.dtype)[..., None]
        h = (tokens[:, 1:] * keep).sum(1) / keep.sum(1)
    return F.normalize(model.proj["text"](h).float(), dim=-1)


def encode(model: OnePeace, pairs: Pairs, index: torch.Tensor, pool: str) -> tuple[torch.Tensor, torch.Tensor]:
    b = pairs.batch(index)
    peer, peer_side = getattr(model, "peer", None), getattr(model, "peer_side", None)
    if peer_side in ("text", "both"):
        text = peer.model.encode_text(OpenClip.pad(b["text"]), normalize=True)
    else:
        text_out = model.forward_encoder(text=b["text"], text_padding_mask=b["text_padding"])["text"]
        text = _text_embedding(model, text_out, b["text_padding"], pool)
    if peer_side in ("image", "both"):
        other = peer.model.encode_image(b["other"], normalize=True)
    elif pairs.kind == "image-text":
        other = model.encode_image(b["other"])
    else:
        other = model.encode_audio(b["other"], b["other_padding"])
    return other, text


@torch.no_grad()
def evaluate(model: OnePeace, pairs: Pairs, pool: str, batch: int = 200) -> dict[str, float]:
    model.eval()
    others, texts = [], []
    for start in range(0, len(pairs), batch):
        o, t = encode(model, pairs, torch.arange(start, min(start + batch, len(pairs))), pool)
        others.append(o)
        texts.append(t)
    model.train()
    o, t = torch.cat(others), torch.cat(texts)
    o2t, t2o = recall_at(o, t), recall_at(t, o)
    return {"o2t_r1": o2t[1], "t2o_r1": t2o[1], "o2t_r10": o2t[10], "t2o_r10": t2o[10],
            "cos_text": mean_pairwise_cosine(t), "cos_other": mean_pairwise_cosine(o)}


def build(variant: Variant, modalities: list[str]) -> OnePeace:
    """The variant's model. Every candidate but ``fixed`` starts from the reference init (``init_scheme``
    reference, ``init_std`` 0.02, what the tiny preset had), so each row changes one thing against
    ``baseline``; ``fixed+...`` changes one thing against the preset as shipped."""
    reference = {"init_scheme": "reference", "init_std": 0.02}
    overrides = {**reference, **variant.overrides} if variant.reference_init else dict(variant.overrides)
    model = OnePeace(model_config("tiny", modalities=modalities, **overrides))
    if variant.patch is not None:
        variant.patch(model)
    return model


def run(name: str, variant: Variant, train: Pairs, val: Pairs, *, steps: int, batch: int, lr: float, warmup: int,
        eval_every: int, seed: int, log=print) -> list[dict]:
    torch.manual_seed(seed)
    model = build(variant, ["text", "image" if train.kind == "image-text" else "audio"])
    lr = variant.lr or lr
    warmup = warmup if variant.warmup is None else variant.warmup
    peer = getattr(model, "peer", None)
    groups = param_groups(model, 0.05) + (peer.parameters_for_optimizer(0.05) if peer is not None else [])
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
    sched = cosine_schedule(opt, steps, warmup, lr, lr * 0.05)
    rows = [{"variant": name, "step": 0, **evaluate(model, val, variant.pool)}]
    log(json.dumps(rows[-1]))
    gen = torch.Generator().manual_seed(seed)
    order, pos, losses, gnorms, started = torch.randperm(len(train), generator=gen), 0, [], [], time.time()
    params = [p for g in groups for p in g["params"]]
    for step in range(1, steps + 1):
        if pos + batch > len(train):
            order, pos = torch.randperm(len(train), generator=gen), 0
        index, pos = order[pos : pos + batch], pos + batch
        other, text = encode(model, train, index, variant.pool)
        scale = bounded_logit_scale(model.logit_scale) if variant.logit_scale == "bounded" else model.logit_scale
        loss = contrastive_loss(other, text, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorms.append(float(torch.nn.utils.clip_grad_norm_(params, 3.0)))
        losses.append(float(loss.detach()))
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            row = {"variant": name, "step": step, **evaluate(model, val, variant.pool),
                   "loss": sum(losses) / len(losses), "grad_norm": sum(gnorms) / len(gnorms),
                   "grad_norm_max": max(gnorms), "logit_scale": math.exp(float(model.logit_scale)),
                   "seconds": round(time.time() - started, 1)}
            losses, gnorms = [], []
            rows.append(row)
            log(json.dumps(row))
    return rows


def probe(name: str, variant: Variant, train: Pairs, batch: int, seed: int) -> dict:
    """At initialisation, on one batch: the scale (rms) of what enters each LayerNorm (its backward divides
    the gradient by about that much) and the gradient norm of each group of parameters."""
    torch.manual_seed(seed)
    model = build(variant, ["text", "image" if train.kind == "image-text" else "audio"])
    rms: dict[str, list[float]] = {}

    def hook(module_name):
        def fn(module, args):
            rms.setdefault(module_name, []).append(float(args[0].detach().float().pow(2).mean().sqrt()))
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.LayerNorm) and n.startswith("encoder")]
    other, text = encode(model, train, torch.arange(batch), variant.pool)
    contrastive_loss(other, text, bounded_logit_scale(model.logit_scale)).backward()
    for h in handles:
        h.remove()
    groups: dict[str, float] = {}
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        key = ("embeddings" if any(k in n for k in ("token_embed", "pos_embed", "cls_token", "cls_pos")) else
               "adapter stems" if n.startswith("adapters") else
               "attention" if ".attn." in n else "ffn" if ".ffn." in n else
               "layer norms, LayerScale" if n.startswith("encoder") else n.split(".")[0])
        groups[key] = groups.get(key, 0.0) + float(p.grad.pow(2).sum())
    short = {}
    for n, v in rms.items():
        kind = ("attn_norm" if n.endswith("attn_norm") else "attn.inner_norm" if n.endswith("attn.inner_norm") else
                "ffn_norm" if n.endswith("ffn_norm") else "ffn.inner_norm" if "inner_norm" in n else "final_norm")
        short.setdefault(kind, []).extend(v)
    return {"variant": name, "ln_input_rms": {k: round(sum(v) / len(v), 4) for k, v in short.items()},
            "grad_norm": {k: round(math.sqrt(v), 3) for k, v in groups.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a data_tools.make_demo folder (64 px images)")
    p.add_argument("--kind", default="image-text", choices=("image-text", "audio-text"))
    p.add_argument("--variants", default="baseline",
                   help=f"comma-separated, each one or several joined by '+', of: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="append result rows (JSON lines) to this file")
    p.add_argument("--probe", action="store_true", help="only the LayerNorm input scales and gradient norms at init")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe:
        train = load_pairs(args.corpus, args.kind, "val", limit=args.batch)
        for name in args.variants.split(","):
            print(json.dumps(probe(name, combine(name), train, args.batch, args.seed)))
        return 0
    train = load_pairs(args.corpus, args.kind, "train")
    val = load_pairs(args.corpus, args.kind, "val", limit=args.val_size)
    print(f"train {len(train)}  val {len(val)}  chance R@1 {100 / len(val):.2f}%", file=sys.stderr)
    for name in args.variants.split(","):
        unknown = [n for n in name.split("+") if n not in VARIANTS]
        if unknown:
            p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
        rows = run(name, combine(name), train, val, steps=args.steps, batch=args.batch, lr=args.lr,
                   warmup=args.warmup, eval_every=args.eval_every, seed=args.seed)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
