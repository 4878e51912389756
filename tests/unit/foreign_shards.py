"""WebDataset shards in the exact layouts other tools write, for the indexer and reader tests.

- img2dataset (``--output_format webdataset``): ``00000.tar`` holding ``KEY.jpg``, ``KEY.txt`` and
  ``KEY.json`` (url, caption, key, status, error_message, width, height, original_width,
  original_height, exif, sha256), keys of 5 shard digits + 4 sample digits; beside each tar a
  ``00000_stats.json`` and a ``00000.parquet`` (the parquet needs pyarrow, which this project does not
  depend on: it is written only when pyarrow is importable; no reader here uses it).
- LAION audio-dataset: ``0.tar`` holding ``KEY.flac`` (48 kHz; stereo here) and ``KEY.json`` whose
  ``"text"`` is a list of captions, plus ``sizes.json`` (``{"0.tar": n, ...}``) beside the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import soundfile as sf
from data_fixtures import caption
from PIL import Image


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


def audio_bytes(seed: int, rate: int = 48000, channels: int = 2, seconds: float = 1.0, fmt: str = "FLAC",
                subtype: str = "PCM_16") -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    wave = np.stack([wave * (1 - 0.3 * c) for c in range(channels)], axis=1)
    out = io.BytesIO()
    sf.write(out, wave.astype(np.float32), rate, format=fmt, subtype=subtype)
    return out.getvalue()


def write_img2dataset(folder: str, shards: int, per_shard: int, image_format: str = "jpg",
                      stats_successes: dict[int, int] | None = None, broken: dict | None = None) -> list[str]:
    """img2dataset output with ``shards`` x ``per_shard`` samples; ``stats_successes`` overrides the count
    a stats file claims, ``broken`` maps a key to what is wrong with it (no_txt, bad_json, no_image)."""
    os.makedirs(folder, exist_ok=True)
    broken = broken or {}
    keys = []
    for shard in range(shards):
        rows = []
        with tarfile.open(os.path.join(folder, f"{shard:05d}.tar"), "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                keys.append(key)
                n = shard * per_shard + i
                text = caption(n)
                data = image_bytes(n, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format])
                meta = {"url": f"https://example.com/{key}.{image_format}", "caption": text, "key": key,
                        "status": "success", "error_message": None, "width": 48, "height": 40,
                        "original_width": 96, "original_height": 80, "exif": "{}",
                        "sha256": hashlib.sha256(data).hexdigest()}
                rows.append(meta)
                problem = broken.get(key)
                if problem != "no_image":
                    _add(tar, f"{key}.{image_format}", data)
                if problem != "no_txt":
                    _add(tar, f"{key}.txt", text.encode())
                _add(tar, f"{key}.json", b"{not json" if problem == "bad_json" else json.dumps(meta).encode())
        successes = (stats_successes or {}).get(shard, per_shard)
        stats = {"count": per_shard + 2, "successes": successes, "failed_to_download": 2, "failed_to_resize": 0,
                 "duration": 1.5, "start_time": 1700000000.0, "end_time": 1700000001.5,
                 "status_dict": {"success": successes, "failed to download": 2}}
        with open(os.path.join(folder, f"{shard:05d}_stats.json"), "w") as f:
            json.dump(stats, f)
        _write_parquet(os.path.join(folder, f"{shard:05d}.parquet"), rows)
    return keys


def _write_parquet(path: str, rows: list[dict]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # not a dependency of this project; readers never open the parquet
        return
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_laion_audio(folder: str, shards: int, per_shard: int, captions_per_clip: int = 2, rate: int = 48000,
                      channels: int = 2, sizes: dict[str, int] | None = None, broken: dict | None = None) -> list[str]:
    """LAION audio-dataset shards ``0.tar``... with ``sizes.json``; ``broken`` maps a key to
    empty_text (an empty caption list), no_text (no "text" field) or bad_json."""
    os.makedirs(folder, exist_ok=True)
    broken = broken or {}
    keys, counts = [], {}
    for shard in range(shards):
        with tarfile.open(os.path.join(folder, f"{shard}.tar"), "w") as tar:
            for i in range(per_shard):
                n = shard * per_shard + i
                key = str(n)
                keys.append(key)
                meta = {"text": [caption(200 + n) + (f" take {j}" if j else "") for j in range(captions_per_clip)],
                        "tag": ["tone"], "original_data": {"title": f"clip {n}", "sample_rate": rate}}
                problem = broken.get(key)
                if problem == "empty_text":
                    meta["text"] = []
                elif problem == "no_text":
                    del meta["text"]
                _add(tar, f"{key}.flac", audio_bytes(n, rate, channels, seconds=0.6 + 0.1 * (n % 5)))
                _add(tar, f"{key}.json", b"[1, 2" if problem == "bad_json" else json.dumps(meta).encode())
        counts[f"{shard}.tar"] = per_shard
    with open(os.path.join(folder, "sizes.json"), "w") as f:
        json.dump(sizes if sizes is not None else counts, f)
    return keys
