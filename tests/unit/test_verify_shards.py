"""data_tools.verify_shards catches damaged, missing, miscounted and foreign shard contents."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
from data_fixtures import index_of, make_audio_text, make_image_text, read_tar, write_tar

from data_tools.verify_shards import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("verify"))
    return {"image-text": make_image_text(root, 6, per_shard=3), "audio-text": make_audio_text(root, 4, per_shard=2)}


def copy(src: str, dst) -> str:
    return shutil.copytree(src, str(dst))


@pytest.mark.parametrize("kind", ["image-text", "audio-text"])
def test_a_fresh_build_verifies(built, kind, capsys):
    assert main([built[kind], "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and out.count("ok   ") == len(index_of(built[kind])["shards"])


def test_tampered_jpeg_is_caught(built, tmp_path, capsys):
    folder = copy(built["image-text"], tmp_path / "t")
    path = os.path.join(folder, "it-000001.tar")
    members = read_tar(path)
    jpg = next(n for n in members if n.endswith(".jpg"))
    members[jpg] = members[jpg][: len(members[jpg]) // 3]  # a truncated image inside a well-formed tar
    write_tar(path, members)
    assert main([folder, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL it-000001.tar" in out and "sha256 differs" in out and f"{jpg}: does not decode" in out
    assert "ok   it-000000.tar" in out


def test_flipped_bytes_in_audio_are_caught(built, tmp_path, capsys):
    folder = copy(built["audio-text"], tmp_path / "a")
    path = os.path.join(folder, "at-000000.tar")
    data = bytearray(open(path, "rb").read())
    start = data.find(b"fLaC")
    data[start + 400:start + 900] = bytes(500)
    open(path, "wb").write(bytes(data))
    assert main([folder, "--quiet"]) == 1
    assert "FAIL at-000000.tar" in capsys.readouterr().out


def test_missing_shard_wrong_count_foreign_member_and_unlisted_tar(built, tmp_path, capsys):
    folder = copy(built["image-text"], tmp_path / "m")
    os.remove(os.path.join(folder, "it-000000.tar"))
    index = index_of(folder)
    index["shards"][1]["samples"] = 4
    with open(os.path.join(folder, "index.json"), "w") as f:
        json.dump(index, f)
    members = read_tar(os.path.join(folder, "it-000001.tar"))
    key = next(iter(members)).split(".")[0]
    members[f"{key}.pickle"] = pickle.dumps({"x": 1})
    write_tar(os.path.join(folder, "it-000001.tar"), members)
    shutil.copy(os.path.join(built["image-text"], "it-000000.tar"), os.path.join(folder, "stray.tar"))
    assert main([folder, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL it-000000.tar" in out and "file is missing" in out
    assert "3 samples, index.json says 4" in out
    assert f"{key}.pickle: not a member this format allows" in out
    assert "FAIL stray.tar: a shard in the folder that index.json does not list" in out
    assert "FAIL total" in out


def test_no_index_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path), "--quiet"]) == 2
    assert "no such index" in capsys.readouterr().err
