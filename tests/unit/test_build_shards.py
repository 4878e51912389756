"""data_tools.build_shards on real media: rejects, formats, errors, determinism, resume, splits and merge."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from data_fixtures import build, index_of, read_tar, rejects_of, write_audio, write_image, write_tsv
from PIL import Image

from onepeace.data.shards import resolve_shards

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shard_samples(folder: str) -> dict[str, dict]:
    """key -> {"meta": KEY.json, ext: bytes} over every shard of a build."""
    out: dict[str, dict] = {}
    for entry in index_of(folder)["shards"]:
        for name, data in read_tar(os.path.join(folder, entry["path"])).items():
            key, ext = name.split(".", 1)
            out.setdefault(key, {})[ext] = data
    for sample in out.values():
        sample["meta"] = json.loads(sample["json"])
    return out


def test_image_text_bad_samples_rejected_with_reason_and_good_kept(tmp_path):
    root = str(tmp_path)
    good = [f"good{i}" for i in range(6)]
    for i, name in enumerate(good):
        write_image(f"{root}/m/{name}.png", 30 + i, 20 + i, seed=i)
    write_image(f"{root}/m/trunc.jpg", 64, 64, fmt="JPEG")
    with open(f"{root}/m/trunc.jpg", "r+b") as f:
        f.truncate(os.path.getsize(f"{root}/m/trunc.jpg") // 2)
    with open(f"{root}/m/notimage.png", "w") as f:
        f.write("this is not an image")
    os.makedirs(f"{root}/m/adir.png")
    lines = [b"id\timage\ttext\tlabel"]
    lines += [f"{name}\tm/{name}.png\t  Caption  of {name} \tcls".encode() for name in good]
    lines += [
        b"missing\tm/nope.png\tcaption\tcls",
        b"unreadable\tm/adir.png\tcaption\tcls",
        b"truncated\tm/trunc.jpg\tcaption\tcls",
        b"garbage\tm/notimage.png\tcaption\tcls",
        b"empty\tm/good0.png\t   \tcls",
        b"badutf8\tm/good0.png\tcaf\xe9 \xff\tcls",
        b"short\tm/good0.png",
        b"good0\tm/good1.png\tduplicate id\tcls",
        b"toolong\tm/good0.png\tcaption\tcls\textra",
        b"\tm/good0.png\tno id\tcls",
    ]
    with open(f"{root}/train.tsv", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    assert build("--manifest", f"{root}/train.tsv", "--out", f"{root}/out", "--samples-per-shard", "4") == 0

    expected = {"missing": "missing_file", "unreadable": "unreadable_file", "truncated": "corrupt_image",
                "garbage": "corrupt_image", "empty": "empty_text", "badutf8": "invalid_utf8", "short": "missing_column",
                "good0": "duplicate_id", "toolong": "bad_row", "": "missing_column"}
    rejects = rejects_of(f"{root}/out")
    assert {r["id"]: r["reason"] for r in rejects} == expected
    assert all(r["source"].startswith("train.tsv:") and r["detail"] for r in rejects)
    assert [r["source"] for r in rejects][:2] == ["train.tsv:8", "train.tsv:9"]  # header is line 1

    index = index_of(f"{root}/out")
    assert index["kind"] == "image-text" and index["total_samples"] == len(good)
    assert index["rejected"] == {reason: list(expected.values()).count(reason) for reason in set(expected.values())}
    assert [s["samples"] for s in index["shards"]] == [4, 2]
    samples = shard_samples(f"{root}/out")
    assert sorted(s["meta"]["id"] for s in samples.values()) == sorted(good)
    first = samples["s000000000"]
    assert first["txt"].decode() == "Caption of good0"  # stripped and collapsed, case kept
    assert first["meta"] == {"id": "good0", "source": "train.tsv:2", "width": 30, "height": 20, "label": "cls"}
    assert Image.open(__import__("io").BytesIO(first["jpg"])).format == "JPEG"


def test_audio_bad_samples_and_processing(tmp_path):
    root = str(tmp_path)
    write_audio(f"{root}/a/mono.wav", seconds=1.0)
    write_audio(f"{root}/a/stereo44.wav", seconds=2.0, rate=44100, channels=2)
    write_audio(f"{root}/a/long.flac", seconds=3.0, rate=16000)
    write_audio(f"{root}/a/tiny.wav", seconds=0.05)
    for name in ("trunc.wav", "trunc.flac"):
        src = write_audio(f"{root}/a/{name}", seconds=1.0)
        with open(src, "r+b") as f:
            f.truncate(os.path.getsize(src) // 2)
    rows = [["mono", "a/mono.wav", "a tone"], ["stereo", "a/stereo44.wav", "stereo"], ["long", "a/long.flac", "long"],
            ["tiny", "a/tiny.wav", "too short"], ["twav", "a/trunc.wav", "x"], ["tflac", "a/trunc.flac", "x"]]
    manifest = write_tsv(f"{root}/audio.tsv", ["id", "audio", "text"], rows)
    assert build("--manifest", manifest, "--out", f"{root}/out", "--max-audio-seconds", "2.5") == 0
    assert {r["id"]: r["reason"] for r in rejects_of(f"{root}/out")} == {
        "tiny": "audio_too_short", "twav": "corrupt_audio", "tflac": "corrupt_audio"}
    samples = {s["meta"]["id"]: s for s in shard_samples(f"{root}/out").values()}
    assert sorted(samples) == ["long", "mono", "stereo"]
    for name, seconds in (("mono", 1.0), ("stereo", 2.0), ("long", 2.5)):
        wave, rate = sf.read(__import__("io").BytesIO(samples[name]["flac"]))
        assert rate == 16000 and wave.ndim == 1 and abs(len(wave) / 16000 - seconds) < 1e-3
        assert samples[name]["meta"]["seconds"] == pytest.approx(seconds, abs=1e-3)
        assert sf.info(__import__("io").BytesIO(samples[name]["flac"])).subtype == "PCM_16"


def test_images_are_upright_rgb_and_capped(tmp_path):
    root = str(tmp_path)
    write_image(f"{root}/i/rot.jpg", 60, 40, fmt="JPEG", orientation=6)  # stored landscape, shown portrait
    write_image(f"{root}/i/big.png", 300, 200)
    write_image(f"{root}/i/rgba.png", 20, 20, mode="RGBA")
    write_image(f"{root}/i/grey.png", 20, 10, mode="L")
    write_image(f"{root}/i/small.jpg", 50, 40, fmt="JPEG")
    rows = [[n, f"i/{n}"] for n in ("rot.jpg", "big.png", "rgba.png", "grey.png", "small.jpg")]
    manifest = write_tsv(f"{root}/img.tsv", ["id", "image"], rows)
    assert build("--manifest", manifest, "--out", f"{root}/out", "--image-size", "64") == 0
    assert index_of(f"{root}/out")["kind"] == "image"
    samples = {s["meta"]["id"]: s for s in shard_samples(f"{root}/out").values()}
    sizes = {}
    for name, s in samples.items():
        im = Image.open(__import__("io").BytesIO(s["jpg"]))
        assert im.format == "JPEG" and im.mode == "RGB"
        assert im.getexif().get(0x0112, 1) == 1
        sizes[name] = im.size
        assert (s["meta"]["width"], s["meta"]["height"]) == im.size
    assert sizes == {"rot.jpg": (40, 60), "big.png": (96, 64), "rgba.png": (20, 20), "grey.png": (20, 10),
                     "small.jpg": (50, 40)}
    with open(f"{root}/i/small.jpg", "rb") as f:
        assert samples["small.jpg"]["jpg"] == f.read()  # already fine: stored untouched


def test_csv_jsonl_and_text_file_inputs(tmp_path):
    root = str(tmp_path)
    for i in range(3):
        write_image(f"{root}/p{i}.png", seed=i)
    with open(f"{root}/m.csv", "w") as f:
        f.write('image,text\np0.png,"a caption, with a comma"\np1.png,"two\nlines"\n\np2.png,plain\n')
    assert build("--manifest", f"{root}/m.csv", "--out", f"{root}/csv") == 0
    texts = sorted(s["txt"].decode() for s in shard_samples(f"{root}/csv").values())
    assert texts == ["a caption, with a comma", "plain", "two lines"]
    assert sorted(s["meta"]["source"] for s in shard_samples(f"{root}/csv").values()) == ["m.csv:2", "m.csv:3", "m.csv:6"]

    with open(f"{root}/m.jsonl", "w") as f:
        f.write(json.dumps({"id": 7, "image": "p0.png", "text": "seven"}) + "\n\n")
        f.write("{not json\n")
        f.write(json.dumps(["a", "list"]) + "\n")
        f.write(json.dumps({"id": "x", "image": "p1.png"}) + "\n")
        f.write(json.dumps({"id": "y", "image": "p2.png", "text": 5}) + "\n")
    assert build("--manifest", f"{root}/m.jsonl", "--out", f"{root}/jsonl") == 0
    assert [s["meta"]["id"] for s in shard_samples(f"{root}/jsonl").values()] == ["7"]
    assert [(r["source"], r["reason"]) for r in rejects_of(f"{root}/jsonl")] == [
        ("m.jsonl:3", "bad_row"), ("m.jsonl:4", "bad_row"), ("m.jsonl:5", "missing_column"), ("m.jsonl:6", "bad_row")]

    with open(f"{root}/corpus.txt", "wb") as f:
        f.write(b"First line.\n\n  second   line \nbad \xff byte\n")
    assert build("--text-file", f"{root}/corpus.txt", "--out", f"{root}/text") == 0
    assert index_of(f"{root}/text")["kind"] == "text"
    assert [s["txt"].decode() for s in shard_samples(f"{root}/text").values()] == ["First line.", "second line"]
    assert [r["reason"] for r in rejects_of(f"{root}/text")] == ["empty_text", "invalid_utf8"]


@pytest.mark.parametrize("content, args, code, words", [
    (None, [], 2, ["nope.tsv", "no such file"]),
    ("image\tcaption\nx.png\thi\n", [], 2, ["m.tsv:1", "unknown column 'caption'"]),
    ("image\ttext\n", [], 2, ["m.tsv", "no data rows"]),
    ("image\taudio\ttext\nx\ty\tz\n", [], 2, ["m.tsv", "--kind"]),
    ("text\nhello\n", ["--kind", "image"], 2, ["m.tsv", "needs column image"]),
    ("image\ttext\nmissing1.png\thi\nmissing2.png\tho\n", [], 1, ["m.tsv", "no usable rows", "missing_file 2"]),
])
def test_fatal_manifest_problems_exit_non_zero_and_name_the_file(tmp_path, capsys, content, args, code, words):
    path = tmp_path / ("nope.tsv" if content is None else "m.tsv")
    if content is not None:
        path.write_text(content)
    assert build("--manifest", str(path), "--out", str(tmp_path / "out"), *args) == code
    err = capsys.readouterr().err
    for word in words:
        assert word in err
    assert not (tmp_path / "out" / "index.json").exists()


def test_unknown_jsonl_key_is_fatal(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"text": "a"}\n{"text": "b", "colour": "red"}\n')
    assert build("--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out")) == 2
    assert "m.jsonl:2: unknown key 'colour'" in capsys.readouterr().err


def _manifest_of_images(root: str, n: int, name: str = "m.tsv") -> str:
    rows = []
    for i in range(n):
        write_image(f"{root}/img/{i}.png", 40 + i % 5, 30, seed=i)
        rows.append([f"id{i}", f"img/{i}.png", f"caption {i}"])
    rows.insert(3, ["id1", "img/0.png", "duplicate id"])
    rows.insert(5, ["bad", "img/missing.png", "missing"])
    return write_tsv(f"{root}/{name}", ["id", "image", "text"], rows)


def _hashes(folder: str) -> list[tuple[str, int, str]]:
    return [(s["path"], s["samples"], s["sha256"]) for s in index_of(folder)["shards"]]


def test_same_input_gives_same_shards_whatever_the_workers(tmp_path):
    manifest = _manifest_of_images(str(tmp_path), 14)
    assert build("--manifest", manifest, "--out", f"{tmp_path}/a", "--samples-per-shard", "3", "--workers", "1") == 0
    assert build("--manifest", manifest, "--out", f"{tmp_path}/b", "--samples-per-shard", "3", "--workers", "2") == 0
    assert _hashes(f"{tmp_path}/a") == _hashes(f"{tmp_path}/b")
    assert rejects_of(f"{tmp_path}/a") == rejects_of(f"{tmp_path}/b")
    assert index_of(f"{tmp_path}/a")["total_samples"] == 14


def test_byte_sizes_si_and_binary():
    from data_tools.build_shards import parse_bytes

    assert [parse_bytes(t) for t in ("1000000", "12k", "500M", "1G", "1.5GB", "1GiB", "512Mi", "2KiB", "1 TB")] == \
        [1000000, 12000, 500 * 10**6, 10**9, 1500 * 10**6, 2**30, 512 * 2**20, 2048, 10**12]
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_bytes("1iB")


def test_max_shard_bytes_starts_new_shards(tmp_path):
    manifest = _manifest_of_images(str(tmp_path), 10)
    assert build("--manifest", manifest, "--out", f"{tmp_path}/o", "--max-shard-bytes", "12k") == 0
    index = index_of(f"{tmp_path}/o")
    assert len(index["shards"]) > 2 and index["total_samples"] == 10
    assert all(s["bytes"] <= 12000 + 10240 for s in index["shards"])  # tar pads to 10 KiB records
    assert index["settings"]["max_shard_bytes"] == 12000


def test_existing_build_needs_resume_or_overwrite(tmp_path, capsys):
    manifest = _manifest_of_images(str(tmp_path), 4)
    out = f"{tmp_path}/o"
    assert build("--manifest", manifest, "--out", out) == 0
    assert build("--manifest", manifest, "--out", out) == 1
    assert "--resume" in capsys.readouterr().err
    assert build("--manifest", manifest, "--out", out, "--resume") == 0
    assert "already complete" in capsys.readouterr().err
    assert build("--manifest", manifest, "--out", out, "--overwrite", "--samples-per-shard", "1") == 0
    assert len(index_of(out)["shards"]) == 4


def test_resume_after_killed_build_matches_uninterrupted_build(tmp_path):
    root = str(tmp_path)
    manifest = _manifest_of_images(root, 12)
    assert build("--manifest", manifest, "--out", f"{root}/reference", "--samples-per-shard", "2") == 0
    # Row 11's image becomes a FIFO: opening it blocks the builder at a known point (4 shards done,
    # the 5th open with one sample), where we kill it.
    os.rename(f"{root}/img/9.png", f"{root}/img/9.keep")
    os.mkfifo(f"{root}/img/9.png")
    out = f"{root}/out"
    cmd = [sys.executable, "-m", "data_tools.build_shards", "--manifest", manifest, "--out", out,
           "--samples-per-shard", "2", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE)
    journal = f"{out}/.build-journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(journal) and len(open(journal).read().splitlines()) >= 1 + 4 and any(
                n.endswith(".tar.tmp") for n in os.listdir(out)):
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(f"{out}/index.json")
    finished = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
    assert finished == [f"m-00000{i}.tar" for i in range(4)]

    os.remove(f"{root}/img/9.png")
    os.rename(f"{root}/img/9.keep", f"{root}/img/9.png")
    mtimes = {n: os.path.getmtime(f"{out}/{n}") for n in finished}
    assert build("--manifest", manifest, "--out", out, "--samples-per-shard", "3", "--resume") == 1  # flags changed
    assert build("--manifest", manifest, "--out", out, "--samples-per-shard", "2", "--resume") == 0
    assert _hashes(out) == _hashes(f"{root}/reference")
    assert rejects_of(out) == rejects_of(f"{root}/reference")
    assert {n: os.path.getmtime(f"{out}/{n}") for n in finished} == mtimes  # finished shards were reused
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_splits_merge_to_the_same_samples_as_one_build(tmp_path):
    root = str(tmp_path)
    manifest = _manifest_of_images(root, 11)
    assert build("--manifest", manifest, "--out", f"{root}/whole", "--samples-per-shard", "2") == 0
    for i in range(3):
        assert build("--manifest", manifest, "--out", f"{root}/parts/p{i}", "--samples-per-shard", "2",
                     "--num-splits", "3", "--split-index", str(i)) == 0
    from data_tools.build_shards import main

    parts = [f"{root}/parts/p{i}" for i in range(3)]
    assert main(["merge", "--out", f"{root}/parts", *parts]) == 0
    whole, merged = shard_samples(f"{root}/whole"), shard_samples(f"{root}/parts")
    assert sorted(whole) == sorted(merged)  # same keys: global row numbers
    assert {k: v["meta"]["id"] for k, v in whole.items()} == {k: v["meta"]["id"] for k, v in merged.items()}
    assert sorted(map(json.dumps, rejects_of(f"{root}/whole"))) == sorted(map(json.dumps, rejects_of(f"{root}/parts")))
    index = index_of(f"{root}/parts")
    assert index["total_samples"] == 11 and index["rejected"] == {"duplicate_id": 1, "missing_file": 1}
    assert all(s["path"].startswith("p") for s in index["shards"])
    assert resolve_shards(f"{root}/parts").total == 11
    assert main(["merge", "--out", f"{root}/again", parts[0], parts[0]]) == 2  # the same part twice


def test_labels_are_stored(tmp_path):
    write_image(f"{tmp_path}/a.png")
    manifest = write_tsv(f"{tmp_path}/m.tsv", ["image", "text", "label"], [["a.png", "x", "  Cat "], ["a.png", "y", ""]])
    assert build("--manifest", manifest, "--out", f"{tmp_path}/o") == 0
    metas = [s["meta"] for s in shard_samples(f"{tmp_path}/o").values()]
    assert [m.get("label") for m in metas] == ["Cat", None]
    assert [m["id"] for m in metas] == ["s000000000", "s000000001"]  # no id column: the key


@pytest.mark.parametrize("tool", ["build_shards", "merge", "train_tokenizer", "verify_shards", "make_demo"])
def test_help_explains_every_flag(tool, capsys):
    import importlib

    module = importlib.import_module(f"data_tools.{'build_shards' if tool == 'merge' else tool}")
    parser = module.merge_parser() if tool == "merge" else module.build_parser()
    for action in parser._actions:
        assert action.help, (tool, action.option_strings or action.dest)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "usage:" in capsys.readouterr().out


def test_progress_bar_and_summary(tmp_path):
    manifest = _manifest_of_images(str(tmp_path), 3)
    proc = subprocess.run([sys.executable, "-m", "data_tools.build_shards", "--manifest", manifest, "--out",
                           f"{tmp_path}/o", "--workers", "1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    assert "sample/s" in proc.stderr and "wrote 3 samples in 1 shard" in proc.stderr
    assert "rejected 2 samples: duplicate_id 1, missing_file 1" in proc.stderr
    np.testing.assert_equal(proc.stdout, "")
