"""Data throughput: the shard builder, and the training pipelines against a plain read-and-decode loop.

    .venv/bin/python benchmarks/data_pipeline.py [--images 400] [--clips 96] [--work DIR]

Makes photo-like JPEGs (640x480) and 10 s stereo 44.1 kHz WAV clips, builds shards from them with
1 and 2 workers, then times one DataLoader worker's work (in-process, one thread) for the image-text
and audio-text training pipelines at the default model settings (256 px, 15 s) against a loop that
only reads the same shards and decodes their members. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
import soundfile as sf
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.builder import BuildPlan, build  # noqa: E402
from data_tools.manifest import Manifest  # noqa: E402
from data_tools.samples import BuildSettings  # noqa: E402
from data_tools.train_tokenizer import train as train_tokenizer  # noqa: E402
from onepeace.config import ModelConfig, from_dict  # noqa: E402
from onepeace.data import DataConfig, build_train_loader  # noqa: E402
from onepeace.data.batching import collate  # noqa: E402
from onepeace.data.decode import SkipCounter  # noqa: E402
from onepeace.data.pipelines import Placement, TaskPipeline  # noqa: E402
from onepeace.data.tokenizer import Tokenizer  # noqa: E402

WORDS = "a the red green blue small large dog cat runs sits on in park street car tree water sky sound of music".split()


def make_media(work: str, images: int, clips: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    os.makedirs(f"{work}/media", exist_ok=True)
    rows = ["image\ttext"]
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(images):
        base = np.stack([xx * rng.uniform(0.1, 0.4), yy * rng.uniform(0.1, 0.5), (xx + yy) * 0.2], -1)
        pixels = np.clip(base + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(f"{work}/media/{i}.jpg", quality=92)
        rows.append(f"media/{i}.jpg\t{' '.join(rng.choice(WORDS, 12))}")
    with open(f"{work}/images.tsv", "w") as f:
        f.write("\n".join(rows) + "\n")
    rows = ["audio\ttext"]
    t = np.arange(441000) / 44100
    for i in range(clips):
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(f"{work}/media/{i}.wav", np.stack([wave, wave], 1).astype(np.float32), 44100, subtype="PCM_16")
        rows.append(f"media/{i}.wav\t{' '.join(rng.choice(WORDS, 12))}")
    with open(f"{work}/audio.tsv", "w") as f:
        f.write("\n".join(rows) + "\n")
    return f"{work}/images.tsv", f"{work}/audio.tsv"


def time_build(manifest: str, out: str, workers: int) -> float:
    plan = BuildPlan(manifest=Manifest(manifest), out_dir=out, name="b", settings=BuildSettings(samples_per_shard=64),
                     root=os.path.dirname(manifest), workers=workers)
    t0 = time.perf_counter()
    index = build(plan, overwrite=True, progress=False, log=lambda m: None)
    return index["total_samples"] / (time.perf_counter() - t0)


def plain_loop(folder: str, samples: int) -> float:
    """Read the shards and decode every member: the floor any pipeline pays."""
    with open(f"{folder}/index.json") as f:
        shards = [os.path.join(folder, s["path"]) for s in json.load(f)["shards"]]
    done, t0 = 0, time.perf_counter()
    while done < samples:
        for path in shards:
            with tarfile.open(path, "r|") as tar:
                for info in tar:
                    data = tar.extractfile(info).read()
                    ext = info.name.rpartition(".")[2]
                    if ext == "jpg":
                        im = Image.open(io.BytesIO(data))
                        im.load()
                        np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
                        done += 1
                    elif ext == "flac":
                        sf.read(io.BytesIO(data), dtype="float32")
                        done += 1
                    elif ext == "txt":
                        data.decode("utf-8")
                    elif ext == "json":
                        json.loads(data)
    return done / (time.perf_counter() - t0)


def pipeline(folder: str, kind: str, tokenizer: str, batch: int, samples: int) -> float:
    data = from_dict(DataConfig, {"tokenizer": tokenizer, "num_workers": 0, "shuffle_buffer": 100,
                                  "train": {kind: {"batch_size": batch, "sources": [{"shards": folder}]}}})
    stream = iter(build_train_loader(data, ModelConfig(), rank=0, world_size=1))
    next(stream)  # fill the shuffle buffer outside the timing
    steps = max(1, samples // batch)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(stream)
    return steps * batch / (time.perf_counter() - t0)


def stages(folder: str, kind: str, tokenizer: str, batch: int, samples: int) -> tuple[float, float, float]:
    """ms per sample spent reading the tar stream, then decoding + transforming, then collating."""
    data = from_dict(DataConfig, {"tokenizer": tokenizer, "train": {kind: {"batch_size": batch,
                                                                           "sources": [{"shards": folder}]}}})
    pipe = TaskPipeline(kind, data.train[kind], data=data, model=ModelConfig(), tokenizer=Tokenizer(tokenizer),
                        train=True)
    rng = np.random.default_rng(0)
    steps = max(1, samples // batch)
    times = []
    for work in ("read", "process", "collate"):
        raw = pipe._raw_samples(pipe.train_urls(Placement(), np.random.default_rng(0)), SkipCounter("bench"))
        t0 = time.perf_counter()
        for _ in range(steps):
            items = [next(raw) for _ in range(batch)]
            if work != "read":
                items = [pipe.process(item, rng) for item in items]
            if work == "collate":
                collate(items, pipe.spec, rng)
        times.append((time.perf_counter() - t0) / (steps * batch) * 1e3)
    return times[0], times[1] - times[0], times[2] - times[1]


def best_of(rounds: int, *runs):
    """Alternate the runs and keep each one's best rate: a busy machine slows rounds, not ratios."""
    best = [0.0] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = max(best[i], run())
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=400, help="image-text samples to make (default: %(default)s)")
    p.add_argument("--clips", type=int, default=96, help="10 s audio-text samples to make (default: %(default)s)")
    p.add_argument("--work", help="folder for media and shards (default: a temporary folder, removed after)")
    p.add_argument("--rounds", type=int, default=3, help="timings alternate this many times; best kept (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker runs with one thread
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        images, audio = make_media(work, args.images, args.clips)
        rows, parts = [], []
        for manifest, kind in ((images, "image-text"), (audio, "audio-text")):
            out = f"{work}/shards/{kind}"
            one, two = best_of(args.rounds, lambda: time_build(manifest, out, 1), lambda: time_build(manifest, out, 2))
            rows.append((f"build_shards {kind}, --workers 1", f"{one:.1f}", ""))
            rows.append((f"build_shards {kind}, --workers 2", f"{two:.1f}", f"{two / one:.2f} x 1 worker"))
        train_tokenizer(out=f"{work}/tok", shards=[f"{work}/shards/image-text"], files=[], vocab_size=200)
        for kind, batch, n in (("image-text", 32, args.images), ("audio-text", 8, args.clips)):
            folder = f"{work}/shards/{kind}"
            plain, piped = best_of(args.rounds, lambda: plain_loop(folder, n),
                                   lambda: pipeline(folder, kind, f"{work}/tok.json", batch, n))
            rows.append((f"plain read + decode, {kind}", f"{plain:.1f}", ""))
            rows.append((f"training pipeline, {kind} (batch {batch})", f"{piped:.1f}", f"{piped / plain:.2f} x plain"))
            split = min((stages(folder, kind, f"{work}/tok.json", batch, n) for _ in range(args.rounds)), key=sum)
            parts.append((kind, *split))
    print("| what | samples/s | ratio |\n| --- | ---: | ---: |")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print("\n| pipeline | tar read ms/sample | decode + transform ms/sample | collate + masks ms/sample |\n"
          "| --- | ---: | ---: | ---: |")
    for kind, read, process, batch in parts:
        print(f"| {kind} | {read:.3f} | {process:.3f} | {batch:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
