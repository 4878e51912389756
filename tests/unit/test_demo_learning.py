"""Every demo family is learnable: a short in-process run of the one demo recipe (its model, data
pipeline, contrastive loss weights, optimizer settings and schedule; fewer steps, one process, a smaller
corpus) must lift held-out R@1 clearly above chance in all four directions, image-text and audio-text.

This guards the learning speed itself (docs/learning.md): with the tiny preset's Linear init at the
reference's std 0.02 the model sits on the contrastive plateau for hundreds of steps and this test
fails. The full target (5x chance after the demo's 400 steps) is what ``python -m onepeace.demo --corpus
NAME`` checks.
"""

from __future__ import annotations

import time

import pytest
import torch

from data_tools.make_demo import FAMILIES, make_demo
from onepeace.data import build_eval_loader, build_train_loader
from onepeace.demo import DEMO_FAMILIES, HEADLINE, _recipe_paths
from onepeace.eval.zeroshot import evaluate_stream
from onepeace.model import OnePeace
from onepeace.recipe import load_recipe
from onepeace.train.engine import param_groups
from onepeace.train.objective import PretrainObjective
from onepeace.train.schedule import cosine_schedule

pytestmark = pytest.mark.slow

TRAIN, VAL = 384, 200  # samples per pair kind; chance R@1 is 1/200
STEPS, WARMUP = 80, 10
# One process with the demo's global batches (its 2 ranks gather their features: 2 x 32 image-text and
# 2 x 16 audio-text pairs per contrastive loss).
BATCHES = ["data.train.image-text.batch_size=64", "data.train.audio-text.batch_size=32"]
# The contrastive terms only: the denoising terms would triple the cost, and the demo's end-to-end test
# trains the whole objective.
CONTRASTIVE_ONLY = [f"train.loss_weights.{term}=0" for term in
                    ("dcl_text", "dcl_image", "dcl_audio", "dcl_pair_text", "dcl_pair_image", "dcl_pair_audio")]
TIMES_CHANCE = 3.0


def test_the_demo_offers_every_family():
    assert set(DEMO_FAMILIES) == set(FAMILIES)


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from a second thread, and on a busy machine that thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_the_demo_recipe_learns_every_family(family, tmp_path, one_thread):
    corpus = tmp_path / "corpus"
    make_demo(str(corpus), family=family, train_size=TRAIN, val_size=VAL, image_px=64, workers=1,
              log=lambda msg: None)
    recipe = load_recipe("demo", _recipe_paths(corpus) + [
        "data.num_workers=0", f"train.steps={STEPS}", f"train.warmup_steps={WARMUP}", *BATCHES,
        *CONTRASTIVE_ONLY])
    cfg = recipe.train
    started, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    model = OnePeace(recipe.model)
    objective = PretrainObjective(model, {name: task.kind for name, task in recipe.data.train.items()},
                                  cfg.loss_weights)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    sched = cosine_schedule(opt, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
    stream = iter(build_train_loader(recipe.data, recipe.model, rank=0, world_size=1))
    for _ in range(cfg.steps):
        loss, _ = objective(next(stream))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()

    model.eval()
    scores = {}
    for kind, metrics in HEADLINE:
        result = evaluate_stream(model, build_eval_loader(kind, recipe.data, recipe.model, rank=0, world_size=1),
                                 name=kind, kind=kind, device=torch.device("cpu"))
        assert result.samples == VAL
        for metric in metrics:
            scores[metric] = result.metrics[metric] / result.chance[metric]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{family}: R@1 / chance {scores}, {seconds:.0f} s, {cpu:.0f} CPU s")
    assert all(times >= TIMES_CHANCE - 1e-6 for times in scores.values()), (family, scores)
