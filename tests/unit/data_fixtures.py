"""Small real media, manifests and shard builds for the data tests (no mocks: real files, real builds)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from data_tools import build_shards, train_tokenizer

WORDS = ("red", "green", "blue", "circle", "square", "small", "large", "tone", "chirp", "high", "low", "noise")


def write_image(path: str, width: int = 40, height: int = 30, seed: int = 0, fmt: str = "PNG",
                orientation: int | None = None, mode: str = "RGB") -> str:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt, **kwargs)
    return path


def write_audio(path: str, seconds: float = 1.0, rate: int = 16000, channels: int = 1, seed: int = 0,
                subtype: str = "PCM_16") -> str:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(n)
    if channels > 1:
        wave = np.stack([wave] * channels, axis=1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wave.astype(np.float32), rate, subtype=subtype)
    return path


def caption(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(WORDS[j] for j in rng.integers(len(WORDS), size=3 + i % 5)) + f" number {i}"


def write_tsv(path: str, header: list[str], rows: list[list[str]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    return path


def build(*args: str) -> int:
    """Run the real CLI in-process (quiet); returns its exit code."""
    return build_shards.main([*args, "--quiet"])


def make_image_text(root: str, n: int, per_shard: int, name: str = "it", labels: bool = True, workers: int = 1) -> str:
    """Build ``n`` image-text samples into ROOT/shards/NAME; returns that folder."""
    rows = []
    for i in range(n):
        write_image(os.path.join(root, "media", f"{name}{i}.png"), 36 + i % 9, 28 + i % 7, seed=i)
        rows.append([f"{name}-{i}", f"media/{name}{i}.png", caption(i)] + ([f"class{i % 3}"] if labels else []))
    manifest = write_tsv(os.path.join(root, f"{name}.tsv"), ["id", "image", "text"] + (["label"] if labels else []), rows)
    out = os.path.join(root, "shards", name)
    assert build("--manifest", manifest, "--out", out, "--samples-per-shard", str(per_shard),
                 "--workers", str(workers)) == 0
    return out


def make_audio_text(root: str, n: int, per_shard: int, name: str = "at") -> str:
    rows = []
    for i in range(n):
        write_audio(os.path.join(root, "media", f"{name}{i}.wav"), seconds=0.5 + 0.25 * (i % 6), seed=i)
        rows.append([f"{name}-{i}", f"media/{name}{i}.wav", caption(100 + i)])
    manifest = write_tsv(os.path.join(root, f"{name}.tsv"), ["id", "audio", "text"], rows)
    out = os.path.join(root, "shards", name)
    assert build("--manifest", manifest, "--out", out, "--samples-per-shard", str(per_shard), "--workers", "1") == 0
    return out


def make_tokenizer(root: str, shard_dirs: list[str]) -> str:
    prefix = os.path.join(root, "tok")
    assert train_tokenizer.main(["--shards", *shard_dirs, "--out", prefix, "--vocab-size", "120"]) == 0
    return prefix + ".json"


def read_tar(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def write_tar(path: str, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def index_of(folder: str) -> dict:
    with open(os.path.join(folder, "index.json"), encoding="utf-8") as f:
        return json.load(f)


def rejects_of(folder: str) -> list[dict]:
    with open(os.path.join(folder, "rejects.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """Shared small shard folders + tokenizer, built once per test session."""
    root = str(tmp_path_factory.mktemp("corpus"))
    image_text = make_image_text(root, 24, per_shard=5)
    audio_text = make_audio_text(root, 12, per_shard=4)
    return {"root": root, "image-text": image_text, "audio-text": audio_text,
            "tokenizer": make_tokenizer(root, [image_text, audio_text])}


def gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, restated: printable Latin-1 bytes stand for themselves,
    the others get 256, 257, ... in byte order."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def write_gpt2_bpe(root, merges: list[tuple[str, str]], in_dict=None) -> tuple[dict[str, int], list[str]]:
    """Official-format BPE files in ROOT: encoder.json (every byte and every merge result, BPE ids not in
    alphabet order), vocab.bpe, and a fairseq dict.txt listing the BPE ids ``in_dict`` accepts (all by
    default) in an order of their own. Returns the encoder and the dict lines."""
    alphabet = gpt2_byte_alphabet()
    tokens = [alphabet[b] for b in range(256)]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    encoder = {t: (i * 37) % len(tokens) for i, t in enumerate(tokens)}
    assert len(set(encoder.values())) == len(tokens)
    kept = [i for i in sorted(encoder.values(), key=lambda i: (-(i % 7), i))
            if in_dict is None or in_dict(i, {v: k for k, v in encoder.items()}[i])]
    lines = [f"{i} {1000 - n}" for n, i in enumerate(kept)]
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f)
    with open(os.path.join(root, "vocab.bpe"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(os.path.join(root, "dict.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return encoder, lines
