"""Our tiny model next to open_clip's CLIP of the same size, on the same batches: who learns faster?

    python benchmarks/peer_open_clip.py --family glyphs            # builds the corpus, ~4 min on 1 core
    python benchmarks/peer_open_clip.py --corpus DIR --steps 600 --runs ours-contrastive,open_clip

Both models see the very same image-text batches from our training loader (one process, the loader's
augmentation included), with the same AdamW (betas, eps, weight decay off 1-D parameters), clipping,
warm-up + cosine schedule and steps. The peer is open_clip's ``CLIP`` with 2 layers, width 64 and 4
heads per tower, 16 px patches on 64 px images, EOS pooling of the text, ``ClipLoss`` and its logit
scale clamped to ln 100 after each step as open_clip's trainer does. Runs:

- ``ours-contrastive``: our ``tiny`` with only the image-text contrastive term;
- ``ours-stage1``: our ``tiny`` with the full stage-1 objective (contrastive + four denoising terms);
- ``open_clip``: the peer.

Printed: held-out R@1/5/10 both ways per run at each evaluation step and training samples/s.
open-clip-torch is imported here only; the library never depends on it. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import machine_name  # noqa: E402
from benchmarks._pairs import Pairs, load_pairs, recall_at  # noqa: E402
from onepeace.config import from_dict, model_config  # noqa: E402
from onepeace.data import DataConfig, build_train_loader  # noqa: E402
from onepeace.losses import bounded_logit_scale  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402
from onepeace.train.config import LossWeights  # noqa: E402
from onepeace.train.engine import param_groups  # noqa: E402
from onepeace.train.objective import PretrainObjective  # noqa: E402
from onepeace.train.schedule import cosine_schedule  # noqa: E402

RUNS = ("ours-contrastive", "ours-stage1", "open_clip")
TEXT_CONTEXT = 72  # our 70 tokens + EOS, plus one


class Ours:
    def __init__(self, stage1: bool, vocab_size: int) -> None:
        self.model = OnePeace(model_config("tiny", modalities=["text", "image"], vocab_size=vocab_size))
        weights = LossWeights() if stage1 else LossWeights(dcl_text=0, dcl_image=0, dcl_pair_text=0, dcl_pair_image=0)
        self.objective = PretrainObjective(self.model, {"image-text": "image-text"}, weights)

    def parameters_for_optimizer(self, weight_decay: float) -> list[dict]:
        return param_groups(self.model, weight_decay)

    def loss(self, batch: dict) -> torch.Tensor:
        total, _ = self.objective({"image-text": batch})
        return total

    def after_step(self) -> None:
        pass

    def logit_scale(self) -> float:
        return math.exp(float(bounded_logit_scale(self.model.logit_scale.detach())))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, text: torch.Tensor, padding: torch.Tensor):
        return self.model.encode_image(images), self.model.encode_text(text, padding)


class OpenClip:
    def __init__(self, vocab_size: int) -> None:
        import open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        vision = CLIPVisionCfg(layers=2, width=64, head_width=16, mlp_ratio=4.0, patch_size=16, image_size=64)
        text = CLIPTextCfg(context_length=TEXT_CONTEXT, vocab_size=vocab_size, width=64, heads=4, layers=2,
                           pad_id=0, eos_id=2, pool_type="eos")
        self.model = CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text)
        self.clip_loss = open_clip.ClipLoss()

    def parameters_for_optimizer(self, weight_decay: float) -> list[dict]:
        # open_clip's trainer: no decay on gains, biases, embeddings and the logit scale.
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "embedding" in name \
                or "logit_scale" in name
            (no_decay if exclude else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @staticmethod
    def pad(text: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(text, (0, TEXT_CONTEXT - text.shape[1]), value=0)

    def loss(self, batch: dict) -> torch.Tensor:
        image = self.model.encode_image(batch["images"], normalize=True)
        text = self.model.encode_text(self.pad(batch["text_tokens"]), normalize=True)
        return self.clip_loss(image, text, self.model.logit_scale.exp())

    def after_step(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))

    def logit_scale(self) -> float:
        return math.exp(float(self.model.logit_scale.detach()))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, text: torch.Tensor, padding: torch.Tensor):  # noqa: ARG002
        return (self.model.encode_image(images, normalize=True),
                self.model.encode_text(self.pad(text), normalize=True))


def evaluate(system, val: Pairs, batch: int = 200) -> dict[str, float]:
    system.model.eval()
    images, texts = [], []
    for start in range(0, len(val), batch):
        b = val.batch(torch.arange(start, min(start + batch, len(val))))
        i, t = system.encode(b["other"], b["text"], b["text_padding"])
        images.append(i.float())
        texts.append(t.float())
    system.model.train()
    i, t = torch.cat(images), torch.cat(texts)
    i2t, t2i = recall_at(i, t), recall_at(t, i)
    return {**{f"i2t@{k}": v for k, v in i2t.items()}, **{f"t2i@{k}": v for k, v in t2i.items()}}


def make_corpus(family: str, out: str, train_size: int, val_size: int) -> str:
    from data_tools.make_demo import make_demo

    make_demo(out, family=family, train_size=train_size, val_size=val_size, image_px=64, workers=1,
              modalities=("image",), log=lambda msg: print(msg, file=sys.stderr))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="a data_tools.make_demo folder built with --image-px 64")
    src.add_argument("--family", help="build this make_demo family's image-text corpus in a temporary folder")
    p.add_argument("--train-size", type=int, default=1500, help="with --family (default: %(default)s)")
    p.add_argument("--val-size", type=int, default=200, help="held-out pairs scored (default: %(default)s)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)} (default: all)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--grad-clip", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = p.parse_args(argv)
    runs = args.runs.split(",")
    for r in runs:
        if r not in RUNS:
            p.error(f"unknown run {r!r}; choose from {', '.join(RUNS)}")
    torch.set_num_threads(args.threads)
    tmp = None
    corpus = args.corpus
    if corpus is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"peer-{args.family}-")
        corpus = make_corpus(args.family, tmp.name, args.train_size, args.val_size)

    data = from_dict(DataConfig, {
        "tokenizer": os.path.join(corpus, "tokenizer.json"), "num_workers": 0, "shuffle_buffer": 500,
        "seed": args.seed,
        "train": {"image-text": {"batch_size": args.batch,
                                 "sources": [{"shards": os.path.join(corpus, "shards", "image-text", "train")}]}}},
        "data")
    val = load_pairs(corpus, "image-text", "val", limit=args.val_size)
    vocab = model_config("tiny").vocab_size
    systems = {}
    for name in runs:
        torch.manual_seed(args.seed)
        systems[name] = OpenClip(vocab) if name == "open_clip" else Ours(name == "ours-stage1", vocab)
    optimizers, schedulers, seconds = {}, {}, {name: 0.0 for name in runs}
    for name, s in systems.items():
        optimizers[name] = torch.optim.AdamW(s.parameters_for_optimizer(args.weight_decay), lr=args.lr,
                                             betas=(0.9, 0.98), eps=1e-8)
        schedulers[name] = cosine_schedule(optimizers[name], args.steps, args.warmup, args.lr, args.min_lr)

    print(f"# peer benchmark: {corpus}, batch {args.batch}, {args.steps} steps, lr {args.lr:g}, warm-up "
          f"{args.warmup}, {len(val)} held-out pairs (chance R@1 {100 / len(val):.2f}%)")
    print(f"# machine: {machine_name(torch.device('cpu'))}")
    header = "| run | step | image->text R@1 | R@5 | R@10 | text->image R@1 | R@5 | R@10 | logit scale | samples/s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    results = {}
    stream = iter(build_train_loader(data, model_config("tiny", modalities=["text", "image"]), rank=0, world_size=1))
    for step in range(1, args.steps + 1):
        batch = next(stream)["image-text"]
        for name, s in systems.items():
            start = time.perf_counter()
            loss = s.loss(batch)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), args.grad_clip)
            optimizers[name].step()
            schedulers[name].step()
            s.after_step()
            seconds[name] += time.perf_counter() - start
        if step % args.eval_every == 0 or step == args.steps:
            for name, s in systems.items():
                r = evaluate(s, val)
                results[name] = r
                rate = step * args.batch / seconds[name]
                print(f"| {name} | {step} | {100 * r['i2t@1']:.1f} | {100 * r['i2t@5']:.1f} | {100 * r['i2t@10']:.1f} | "
                      f"{100 * r['t2i@1']:.1f} | {100 * r['t2i@5']:.1f} | {100 * r['t2i@10']:.1f} | "
                      f"{s.logit_scale():.1f} | {rate:.0f} |", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
