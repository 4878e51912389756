"""Evaluation during training as the trainer calls it: one process, a real recipe over real shards."""

from __future__ import annotations

import logging

import pytest
import torch

from data_fixtures import make_audio_text, make_image_text, make_tokenizer
from onepeace.config import ConfigError
from onepeace.eval.periodic import build_periodic_eval
from onepeace.model import OnePeace
from onepeace.recipe import build_recipe
from onepeace.distributed import detect

SINGLE = detect({})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("periodic"))
    it, at = make_image_text(root, 10, per_shard=4), make_audio_text(root, 6, per_shard=4)
    return {"image-text": it, "audio-text": at, "tokenizer": make_tokenizer(root, [it, at])}


def recipe(shards: dict, eval_sets: dict, modalities=("text", "image", "audio")):
    return build_recipe({"model": {"preset": "tiny", "modalities": list(modalities)},
                         "data": {"tokenizer": shards["tokenizer"], "num_workers": 0, "eval": eval_sets}})


def task(path: str, kind: str | None = None) -> dict:
    return {"batch_size": 4, "sources": [{"shards": path}], **({"kind": kind} if kind else {})}


def test_retrieval_on_every_pair_set_and_other_sets_skipped(shards, caplog):
    r = recipe(shards, {"val-it": task(shards["image-text"], "image-text"),
                        "val-at": task(shards["audio-text"], "audio-text"),
                        "images": task(shards["image-text"], "image")})
    with caplog.at_level(logging.WARNING, logger="onepeace.eval.periodic"):
        evaluate = build_periodic_eval(r, SINGLE, torch.device("cpu"))
    assert "data.eval.images (image) is not evaluated during training" in caplog.text
    model = OnePeace(r.model).eval()
    with torch.no_grad():
        first, again = evaluate(model, 10), evaluate(model, 20)
    assert first == again  # a fresh, complete pass each time
    assert set(first) == {f"eval/{s}/{d}/R@{k}" for s, o in (("val-it", "image"), ("val-at", "audio"))
                          for d in (f"{o}_to_text", f"text_to_{o}") for k in (1, 5, 10)}
    assert all(0.0 <= v <= 1.0 for v in first.values())


def test_nothing_to_do_gives_none(shards):
    assert build_periodic_eval(recipe(shards, {}), SINGLE, torch.device("cpu")) is None
    only_images = recipe(shards, {"images": task(shards["image-text"], "image")})
    assert build_periodic_eval(only_images, SINGLE, torch.device("cpu")) is None


def test_problems_show_before_training_starts(shards, tmp_path):
    with pytest.raises(ValueError, match="no such index"):
        build_periodic_eval(recipe(shards, {"image-text": task(str(tmp_path))}), SINGLE, torch.device("cpu"))
    audio_model = recipe(shards, {"image-text": task(shards["image-text"])}, modalities=("text", "audio"))
    with pytest.raises(ConfigError, match="needs the model's image branch"):
        build_periodic_eval(audio_model, SINGLE, torch.device("cpu"))
