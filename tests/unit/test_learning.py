"""The demo recipe learns every corpus family, not only the one it was first tried on.

For each ``data_tools.make_demo`` family: a small corpus through the real shard builder and tokenizer,
a short in-process run of the demo recipe (its model, optimizer groups, lr and warm-up, batch sizes; the
real training loader with its crops) on image-text and audio-text together, then held-out retrieval with
the evaluation code. Each direction must reach 3x chance: a model whose CLS embeddings collapse
(docs/learning.md) stays at chance. To stay short it trains the two contrastive terms only; the
denoising terms' effect on learning speed is measured by benchmarks/peer_open_clip.py.
"""

from __future__ import annotations

import os

import pytest
import torch

from data_tools.make_demo import FAMILIES, make_demo
from onepeace.data import build_eval_loader, build_train_loader
from onepeace.eval.embeddings import embed_batches
from onepeace.eval.retrieval import retrieval_chance, retrieval_metrics
from onepeace.model import OnePeace
from onepeace.recipe import load_recipe
from onepeace.train.engine import param_groups
from onepeace.train.objective import PretrainObjective
from onepeace.train.schedule import cosine_schedule

STEPS = 120
VAL = 32

pytestmark = pytest.mark.slow  # minutes on a shared machine


def _recipe(corpus: str):
    shards = {kind: {split: os.path.join(corpus, "shards", kind, split) for split in ("train", "val")}
              for kind in ("image-text", "audio-text")}
    overrides = [f"data.tokenizer={os.path.join(corpus, 'tokenizer.json')}", "data.num_workers=0",
                 "data.shuffle_buffer=200", f"train.steps={STEPS}", "train.loss_weights.dcl_text=0",
                 "train.loss_weights.dcl_image=0", "train.loss_weights.dcl_audio=0",
                 "train.loss_weights.dcl_pair_text=0", "train.loss_weights.dcl_pair_image=0",
                 "train.loss_weights.dcl_pair_audio=0"]
    for section, split in (("train", "train"), ("eval", "val")):
        for kind in shards:
            overrides.append(f"data.{section}.{kind}.sources=[{{shards: {shards[kind][split]}}}]")
    return load_recipe("demo", overrides)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_demo_recipe_learns_each_family(family, tmp_path):
    corpus = str(tmp_path / family)
    make_demo(corpus, family=family, train_size=320, val_size=VAL, image_px=64, workers=1, log=lambda msg: None)
    recipe = _recipe(corpus)
    torch.manual_seed(0)
    model = OnePeace(recipe.model)
    objective = PretrainObjective(model, {name: t.kind for name, t in recipe.data.train.items()},
                                  recipe.train.loss_weights)
    t = recipe.train
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=t.betas, eps=t.eps)
    schedule = cosine_schedule(optimizer, t.steps, t.warmup, t.lr, t.min_lr)
    steps = iter(build_train_loader(recipe.data, recipe.model, rank=0, world_size=1))
    for _ in range(t.steps):
        loss, _ = objective(next(steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        for kind, other in (("image-text", "image"), ("audio-text", "audio")):
            rows = embed_batches(model, build_eval_loader(kind, recipe.data, recipe.model, rank=0, world_size=1),
                                 (other, "text"), torch.device("cpu"))
            assert len(rows.ids) == VAL
            scores = retrieval_metrics(rows.emb[other], rows.emb["text"], other)
            chance = retrieval_chance(VAL, other)
            for direction in (f"{other}_to_text/R@1", f"text_to_{other}/R@1"):
                assert scores[direction] >= 3 * chance[direction], (family, direction, scores)
