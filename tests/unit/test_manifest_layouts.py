"""build_shards on the manifest layouts public datasets ship: WavCaps JSON, Clotho and AudioCaps CSVs,
the official ONE-PEACE TSVs, and column aliases; several captions per sample survive into the shard."""

from __future__ import annotations

import base64
import csv
import json
import os

import pytest
from data_fixtures import build, index_of, read_tar, rejects_of, write_audio, write_image

from data_tools.manifest_layouts import detect_layout


def shard_members(folder: str) -> dict[str, bytes]:
    out = {}
    for entry in index_of(folder)["shards"]:
        out.update(read_tar(os.path.join(folder, entry["path"])))
    return out


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_clotho_keeps_all_five_captions(tmp_path):
    for name in ("a.wav", "b.wav"):
        write_audio(str(tmp_path / "dev" / name), seconds=0.5, rate=44100, channels=2)
    manifest = write_csv(tmp_path / "clotho_captions_development.csv", ["file_name"] + [f"caption_{i}" for i in range(1, 6)],
                         [["a.wav", "one", "two", "  ", "four", "five"], ["b.wav"] + [f"b {i}" for i in range(5)],
                          ["missing.wav", "x", "x", "x", "x", "x"]])
    assert detect_layout(manifest) == "clotho"
    out = str(tmp_path / "shards")
    assert build("--manifest", manifest, "--root", str(tmp_path / "dev"), "--out", out, "--name", "clotho") == 0
    members = shard_members(out)
    assert members["s000000000.txt"].decode() == "one\ntwo\nfour\nfive"  # the blank caption is dropped
    assert len(members["s000000001.txt"].decode().splitlines()) == 5
    assert json.loads(members["s000000000.json"])["id"] == "a.wav"
    assert index_of(out)["source"]["format"] == "clotho"
    assert [r["reason"] for r in rejects_of(out)] == ["missing_file"]


def test_wavcaps_json_with_the_default_audio_pattern(tmp_path):
    write_audio(str(tmp_path / "audio" / "Y0abc.flac"), seconds=0.4)
    write_audio(str(tmp_path / "audio" / "17.flac"), seconds=0.4)
    manifest = tmp_path / "as_final.json"
    manifest.write_text(json.dumps({"num_captions_per_audio": 1, "data": [
        {"id": "Y0abc.wav", "caption": "A dog barks.", "audio": "wav_path", "duration": 10.0},
        {"id": 17, "caption": "Rain falls.", "duration": 3.0}, "junk"]}))
    out = str(tmp_path / "shards")
    assert build("--manifest", str(manifest), "--root", str(tmp_path / "audio"), "--out", out) == 0
    members = shard_members(out)
    assert members["s000000000.txt"] == b"A dog barks." and members["s000000001.txt"] == b"Rain falls."
    assert [r["reason"] for r in rejects_of(out)] == ["bad_row"]


def test_audiocaps_finds_each_clip_with_a_pattern(tmp_path):
    write_audio(str(tmp_path / "clips" / "Yabc123_30000.wav"), seconds=0.4)
    write_audio(str(tmp_path / "clips" / "Yxyz789_0.wav"), seconds=0.4)
    manifest = write_csv(tmp_path / "train.csv", ["audiocap_id", "youtube_id", "start_time", "caption"],
                         [["91139", "abc123", "30", "A man speaks"], ["58146", "xyz789", "0", "Birds chirp"],
                          ["1", "gone", "0", "Nothing"]])
    assert detect_layout(manifest) == "audiocaps"
    out = str(tmp_path / "shards")
    assert build("--manifest", manifest, "--out", out) == 2  # the pattern is required
    assert build("--manifest", manifest, "--out", out, "--audio-pattern", "clips/Y{youtube_id}_*.wav") == 0
    members = shard_members(out)
    assert json.loads(members["s000000000.json"])["id"] == "91139" and members["s000000001.txt"] == b"Birds chirp"
    assert [r["reason"] for r in rejects_of(out)] == ["missing_file"]


def test_official_onepeace_tsvs_with_base64_images_and_audio_paths(tmp_path):
    png = write_image(str(tmp_path / "img" / "x.png"), 40, 30)
    with open(png, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    manifest = tmp_path / "cc3m_train.tsv"
    manifest.write_text("image_id\timage\tcaption\n1\t" + encoded + "\ta red square\n2\timg/x.png\ta\tcaption with tab\n")
    assert detect_layout(str(manifest)) == "onepeace"
    out = str(tmp_path / "vl")
    assert build("--manifest", str(manifest), "--out", out) == 0
    members = shard_members(out)
    assert members["s000000000.txt"] == b"a red square" and members["s000000000.jpg"][:2] == b"\xff\xd8"
    assert members["s000000001.txt"] == b"a caption with tab"  # the caption is the rest of the line
    write_audio(str(tmp_path / "wav" / "1.wav"), seconds=0.4, rate=16000)
    audio_manifest = tmp_path / "audio_train.tsv"
    audio_manifest.write_text("uniq_id\taudio\ttext\tduration\n7\twav/1.wav\ta beep\t0.4\n")
    out = str(tmp_path / "al")
    assert build("--manifest", str(audio_manifest), "--out", out) == 0
    assert index_of(out)["kind"] == "audio-text"
    assert json.loads(shard_members(out)["s000000000.json"])["id"] == "7"


def test_column_aliases_ignore_other_columns_and_take_caption_lists(tmp_path):
    write_image(str(tmp_path / "p" / "a.jpg"), fmt="JPEG")
    write_image(str(tmp_path / "p" / "b.jpg"), fmt="JPEG", seed=1)
    manifest = write_csv(tmp_path / "photos.csv", ["filepath", "title", "similarity"],
                         [["p/a.jpg", "first photo", "0.3"], ["p/b.jpg", "second photo", "0.4"]])
    out = str(tmp_path / "shards")
    assert build("--manifest", manifest, "--out", out) == 2  # unknown columns without aliases
    assert build("--manifest", manifest, "--out", out, "--columns", "image=filepath,text=title") == 0
    assert shard_members(out)["s000000001.txt"] == b"second photo"
    jsonl = tmp_path / "multi.jsonl"
    jsonl.write_text(json.dumps({"path": "p/a.jpg", "texts": ["one", "two"]}) + "\n")
    out = str(tmp_path / "multi")
    assert build("--manifest", str(jsonl), "--out", out, "--columns", "image=path,text=texts") == 0
    assert shard_members(out)["s000000000.txt"] == b"one\ntwo"
    with pytest.raises(SystemExit):
        build("--manifest", str(jsonl), "--out", out, "--layout", "nope")
    assert build("--manifest", str(jsonl), "--out", str(tmp_path / "bad"), "--columns", "picture=path") == 2
