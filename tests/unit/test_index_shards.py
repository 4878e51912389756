"""onepeace-index-shards on shards in img2dataset's and the LAION audio-dataset's exact layouts, and the
readers on what it indexes: counts, members, problems, sizes files, multi-caption reading."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import make_tokenizer
from foreign_shards import write_img2dataset, write_laion_audio

from data_tools import index_shards, train_tokenizer
from onepeace.config import from_dict, model_config
from onepeace.data import DataConfig, build_eval_loader, build_train_loader
from onepeace.data.shards import resolve_shards

MODEL = model_config("tiny")


def index(*args: str) -> int:
    return index_shards.main([*args, "--quiet"])


def read_index(folder) -> dict:
    with open(os.path.join(folder, "index.json"), encoding="utf-8") as f:
        return json.load(f)


def test_img2dataset_shards_are_counted_from_their_tar_headers(tmp_path, capsys):
    folder = str(tmp_path / "laion")
    write_img2dataset(folder, shards=3, per_shard=4, broken={"000010001": "no_txt", "000020003": "no_image"})
    assert index(folder) == 0
    idx = read_index(folder)
    assert idx["kind"] == "image-text" and idx["source"]["sizes"] == "scanned"
    assert [(s["path"], s["samples"]) for s in idx["shards"]] == [("00000.tar", 4), ("00001.tar", 4), ("00002.tar", 4)]
    assert idx["members"] == {"image": ["jpg"], "audio": ["flac"], "caption": "txt", "id": "key", "label": "json:label"}
    assert idx["problems"]["no_caption"] == 1 and idx["problems"]["no_media"] == 1
    assert idx["problems"]["examples"]["no_caption"] == ["00001.tar:000010001"]
    err = capsys.readouterr().err
    assert "1 sample(s) without usable media" in err and "1 sample(s) without a caption (txt)" in err
    found = resolve_shards(folder)
    assert found.total == 12 and found.shards[0].layout.id == "key"


def test_trust_sizes_takes_counts_from_stats_and_sizes_files(tmp_path):
    images = str(tmp_path / "img")
    write_img2dataset(images, shards=2, per_shard=3, stats_successes={1: 7})  # shard 1's stats file lies
    assert index(images, "--trust-sizes") == 0
    idx = read_index(images)
    assert [s["samples"] for s in idx["shards"]] == [3, 7] and idx["source"]["sizes"] == "trusted"
    assert index(images) == 0  # scanning tells the truth
    assert [s["samples"] for s in read_index(images)["shards"]] == [3, 3]
    audio = str(tmp_path / "audio")
    write_laion_audio(audio, shards=2, per_shard=2, sizes={"0.tar": 2})  # 1.tar not named: scanned
    assert index(audio, "--trust-sizes") == 0
    idx = read_index(audio)
    assert [s["samples"] for s in idx["shards"]] == [2, 2]
    assert idx["source"]["sizes"].startswith("trusted where")


def test_laion_audio_shards_with_caption_lists_and_bad_samples(tmp_path, capsys):
    folder = str(tmp_path / "audio")
    write_laion_audio(folder, shards=2, per_shard=3, broken={"1": "empty_text", "3": "bad_json", "4": "no_text"})
    assert index(folder) == 0
    idx = read_index(folder)
    assert idx["kind"] == "audio-text" and idx["members"]["caption"] == "json:text"
    assert idx["members"]["audio"] == ["flac"] and idx["total_samples"] == 6
    assert idx["problems"]["bad_json"] == 1 and idx["problems"]["no_caption"] == 2  # bad JSON counted once, as such
    assert "whose .json is not a JSON object" in capsys.readouterr().err


def test_unreadable_shards_are_reported_and_left_out(tmp_path):
    folder = str(tmp_path / "img")
    write_img2dataset(folder, shards=3, per_shard=3)
    with open(os.path.join(folder, "00001.tar"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    with open(os.path.join(folder, "00002.tar"), "wb") as f:
        f.write(b"this is not a tar file" * 40)
    assert index(folder) == 0
    idx = read_index(folder)
    assert [s["path"] for s in idx["shards"]] == ["00000.tar"]
    assert sorted(os.path.basename(u["path"]) for u in idx["problems"]["unreadable_shards"]) == ["00001.tar", "00002.tar"]
    for name in ("00000.tar",):
        os.remove(os.path.join(folder, name))
    assert index(folder) == 1  # nothing readable left


def test_index_elsewhere_patterns_lists_and_refusals(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_img2dataset(a, shards=2, per_shard=2)
    write_img2dataset(b, shards=1, per_shard=3, image_format="png")
    assert index(os.path.join(a, "{00000..00001}.tar"), os.path.join(b, "00000.tar")) == 2
    assert "several folders" in capsys.readouterr().err
    out = str(tmp_path / "indexes" / "mix")
    assert index(os.path.join(a, "{00000..00001}.tar"), os.path.join(b, "00000.tar"), "--out", out) == 0
    idx = read_index(out)
    assert [s["path"] for s in idx["shards"]] == ["../../a/00000.tar", "../../a/00001.tar", "../../b/00000.tar"]
    assert idx["members"]["image"] == ["jpg", "png"]
    assert resolve_shards(out).total == 7
    assert index(a, "--caption", "nonsense") == 2
    shutil.copy(os.path.join(out, "index.json"), os.path.join(a, "index.json"))
    built = read_index(a)
    del built["source"]["indexed_by"]
    with open(os.path.join(a, "index.json"), "w") as f:
        json.dump(built, f)
    assert index(a) == 2 and "was not written by" in capsys.readouterr().err  # never clobbers a build's index
    assert index(a, "--overwrite") == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_a_read_only_folder_needs_out(tmp_path, capsys):
    folder = str(tmp_path / "ro")
    write_img2dataset(folder, shards=1, per_shard=2)
    os.chmod(folder, 0o555)
    try:
        assert index(folder) == 2 and "read-only" in capsys.readouterr().err
        assert index(folder, "--out", str(tmp_path / "idx")) == 0
    finally:
        os.chmod(folder, 0o755)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("foreign")
    images, audio = str(root / "img"), str(root / "audio")
    write_img2dataset(images, shards=2, per_shard=5, image_format="webp", broken={"000000002": "bad_json"})
    write_laion_audio(audio, shards=2, per_shard=4, captions_per_clip=3, broken={"5": "empty_text"})
    assert index(images) == 0 and index(audio) == 0
    tok = str(root / "tok")
    assert train_tokenizer.main(["--shards", images, audio, "--out", tok, "--vocab-size", "120"]) == 0
    return {"image-text": images, "audio-text": audio, "tokenizer": tok + ".json"}


def config(foreign, **kw) -> DataConfig:
    return from_dict(DataConfig, {"tokenizer": foreign["tokenizer"], "num_workers": 0, "shuffle_buffer": 4, **kw}, "data")


def test_training_reads_indexed_shards_as_they_are(foreign):
    cfg = config(foreign, train={k: {"batch_size": 3, "sources": [{"shards": foreign[k]}]}
                                 for k in ("image-text", "audio-text")})
    loader = build_train_loader(cfg, MODEL, rank=0, world_size=1)
    stream = iter(loader)
    for _ in range(4):
        step = next(stream)
        assert step["image-text"]["images"].shape == (3, 3, 64, 64)
        audio = step["audio-text"]["audio"]
        lengths = (~step["audio-text"]["audio_padding_mask"]).sum(1)
        assert audio.shape[0] == 3 and (lengths >= 16000).all()  # 48 kHz clips of 0.6-1 s, at 16 kHz, repeated to 1 s
    assert loader.bad_samples >= 1  # the bad JSON and the empty caption list are skipped, never fatal


def test_evaluation_reads_every_caption(foreign):
    cfg = config(foreign, eval={"audio-text": {"batch_size": 3, "sources": [{"shards": foreign["audio-text"]}]}})
    loader = build_eval_loader("audio-text", cfg, MODEL, rank=0, world_size=1)
    batches = list(loader)
    ids = [i for b in batches for i in b["ids"]]
    assert sorted(ids, key=int) == ["0", "1", "2", "3", "4", "6", "7"] and loader.bad_samples == 1
    for b in batches:
        n = len(b["ids"])
        assert b["caption_owner"].tolist() == [i for i in range(n) for _ in range(3)]
        assert b["caption_tokens"].shape[0] == 3 * n and len(b["captions"]) == 3 * n
        assert b["captions"][1].endswith("take 1")


def test_training_draws_one_caption_per_sample_and_epoch_reproducibly(foreign):
    from onepeace.data.pipelines import caption_choice

    picks = {epoch: [caption_choice(3, str(k), 0, epoch) for k in range(40)] for epoch in range(3)}
    assert picks[0] == [caption_choice(3, str(k), 0, 0) for k in range(40)]
    assert picks[0] != picks[1] and set(picks[0]) == {0, 1, 2}
    assert caption_choice(1, "x", 0, 7) == 0

    cfg = config(foreign, train={"audio-text": {"batch_size": 4, "sources": [{"shards": foreign["audio-text"]}]}})

    def tokens(epoch):
        stream = iter(build_train_loader(cfg, MODEL, epoch=epoch, rank=0, world_size=1))
        return [next(stream)["audio-text"]["text_tokens"] for _ in range(3)]

    first, again = tokens(0), tokens(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_verify_shards_decodes_indexed_shards_where_members_say(tmp_path, capsys):
    from data_tools import verify_shards

    folder = str(tmp_path / "audio")
    write_laion_audio(folder, shards=2, per_shard=3, broken={"4": "empty_text"})
    assert index(folder) == 0
    assert verify_shards.main([folder, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "ok   0.tar: 3 samples" in out and "FAIL 1.tar: 1 problem" in out and "4: empty caption" in out
