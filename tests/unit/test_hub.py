"""Exports: model.safetensors + config.json + tokenizer/, read back by from_pretrained with no network."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from onepeace.config import ConfigError, model_config, to_dict
from onepeace.model import OnePeace
from onepeace.runs import load_model
from onepeace.train.export import main as export_main


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def same_weights(a: OnePeace, b: OnePeace) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_writes_the_hub_layout_and_loads_back(tmp_path):
    torch.manual_seed(0)
    model = OnePeace(model_config("tiny", modalities=["text", "image"]))
    model.save_pretrained(str(tmp_path / "m"), extra={"tokenizer": "tokenizer/tokenizer.json"})
    assert sorted(os.listdir(tmp_path / "m")) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["embed_dim"] == 64 and config["modalities"] == ["text", "image"]
    assert config["tokenizer"] == "tokenizer/tokenizer.json"
    loaded = OnePeace.from_pretrained(str(tmp_path / "m"), attention_backend="math")
    assert same_weights(model, loaded) and loaded.config.attention_backend == "math" and not loaded.training
    assert to_dict(loaded.config) == {**to_dict(model.config), "attention_backend": "math"}


def test_bf16_export_holds_bf16_weights(tmp_path):
    model = OnePeace(model_config("tiny"))
    model.save_pretrained(str(tmp_path / "m"), dtype=torch.bfloat16)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.bfloat16}
    loaded = OnePeace.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(loaded.logit_scale, model.logit_scale.to(torch.bfloat16).float())


def test_older_exports_still_load_and_convert(tmp_path):
    """config.yaml + model.pt, as exports were written before the Hub layout."""
    torch.manual_seed(1)
    model = OnePeace(model_config("tiny"))
    old = tmp_path / "old"
    old.mkdir()
    torch.save(model.state_dict(), old / "model.pt")
    (old / "tokenizer").mkdir()
    (old / "tokenizer" / "tok.model").write_bytes(b"sentencepiece model bytes")
    (old / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model_file": "tok.model", "pad_id": 0}))
    (old / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(model.config),
                                                     "tokenizer": "tokenizer/tokenizer.json"}))
    assert same_weights(model, OnePeace.from_pretrained(str(old)))
    assert load_model(str(old)).tokenizer == str(old / "tokenizer" / "tokenizer.json")
    assert export_main([str(old), str(tmp_path / "new")]) == 0
    new = tmp_path / "new"
    assert {"config.json", "model.safetensors", "tokenizer"} <= set(os.listdir(new))
    assert (new / "tokenizer" / "tok.model").read_bytes() == b"sentencepiece model bytes"
    converted = load_model(str(new))
    assert same_weights(model, converted.model) and converted.tokenizer == str(new / "tokenizer" / "tokenizer.json")
    assert json.loads((new / "config.json").read_text())["source"] == {"export": str(old)}


def test_broken_exports_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported ONE-PEACE model: config.json and model.safetensors"):
        OnePeace.from_pretrained(str(tmp_path))
    OnePeace(model_config("tiny")).save_pretrained(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "embed_dimm": 3}))
    with pytest.raises(ConfigError, match=r"config.json: .*embed_dimm"):
        OnePeace.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "depth": 3}))
    with pytest.raises(RuntimeError, match="encoder.layers.2"):
        OnePeace.from_pretrained(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="extra may hold tokenizer, source, not step"):
        OnePeace(model_config("tiny")).save_pretrained(str(tmp_path / "x"), extra={"step": 3})
