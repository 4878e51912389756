"""python -m data_tools.make_demo --out DIR [--family NAME]: a small learnable image/audio/text corpus, no downloads.

Families (``FAMILIES``) are unlike each other, so a recipe can be checked on data it was not tuned on:
``shapes`` (filled shapes; tones, chirps and noises), ``glyphs`` (letters and digits; Morse code) and
``patterns`` (textures; telephone key tones). Writes raw media and manifests first, then builds shards
with the real shard builder and trains the caption tokenizer, so the demo exercises the same path as
real data:

    DIR/raw/{images,audio}/{train,val}/...      PNG images, WAV clips
    DIR/raw/{image_text,audio_text}_{train,val}.tsv, DIR/raw/text_train.txt
    DIR/shards/{image-text,audio-text}/{train,val}/, DIR/shards/text/train/
    DIR/tokenizer.model, DIR/tokenizer.json
    DIR/labels_image.txt, DIR/labels_audio.txt    class names for zero-shot classification
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np
import soundfile as sf

from data_tools import demo_glyphs, demo_media, demo_patterns
from data_tools.build_shards import default_workers
from data_tools.builder import BuildPlan, build
from data_tools.manifest import Manifest
from data_tools.parallel import ordered_map
from data_tools.samples import BuildSettings
from data_tools.train_tokenizer import train as train_tokenizer

PROG = "python -m data_tools.make_demo"
SAMPLE_RATE = 16000
SPLITS = {"train": 0, "val": 1}
# Each family module has DESCRIPTION, IMAGE_LABELS, AUDIO_LABELS, make_image(rng, px) and make_audio(rng, rate).
FAMILIES = {"shapes": demo_media, "glyphs": demo_glyphs, "patterns": demo_patterns}
MODALITIES = ("image", "audio")


def _rng(seed: int, modality: int, split: str, index: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([seed, modality, SPLITS[split], index, attempt])


def _make_one(task: tuple) -> tuple[str, str, str]:
    """Write one raw file; returns (relative path, caption, label). Runs in worker processes."""
    family, modality, split, index, attempt, seed, raw, image_px = task
    media = FAMILIES[family]
    rng = _rng(seed, 0 if modality == "image" else 1, split, index, attempt)
    if modality == "image":
        image, caption, label = media.make_image(rng, image_px)
        rel = os.path.join("images", split, f"img_{index:06d}.png")
        image.save(os.path.join(raw, rel))
    else:
        wave, caption, label = media.make_audio(rng, SAMPLE_RATE)
        if index % 7 == 3:  # some stereo files, so the builder's down-mix is part of the demo too
            wave = np.stack([wave, wave * 0.8], axis=1)
        rel = os.path.join("audio", split, f"clip_{index:06d}.wav")
        sf.write(os.path.join(raw, rel), wave, SAMPLE_RATE, subtype="PCM_16")
    return rel, caption, label


def _caption_only(task: tuple) -> str:
    family, modality, split, index, attempt, seed, _, image_px = task
    media = FAMILIES[family]
    rng = _rng(seed, 0 if modality == "image" else 1, split, index, attempt)
    if modality == "image":
        return media.make_image(rng, image_px)[1]
    return media.make_audio(rng, SAMPLE_RATE)[1]


def _attempts(family: str, modality: str, split: str, count: int, seed: int, image_px: int) -> list[int]:
    """Per sample, the first draw whose caption no earlier validation sample used: held-out captions
    are all distinct, so retrieval scored by index is well defined. Training keeps every first draw."""
    if split == "train":
        return [0] * count
    used, attempts = set(), []
    for index in range(count):
        for attempt in range(100):
            caption = _caption_only((family, modality, split, index, attempt, seed, None, image_px))
            if caption not in used:
                break
        else:
            raise RuntimeError(f"make_demo: {family} {modality} {split} sample {index} found no caption unused "
                               f"by earlier held-out samples in 100 draws; use a smaller --val-size")
        used.add(caption)
        attempts.append(attempt)
    return attempts


def write_raw(out: str, modality: str, split: str, count: int, seed: int, image_px: int, workers: int,
              family: str = "shapes") -> str:
    """Media files and a manifest with id, media path, text and label; returns the manifest path."""
    raw = os.path.join(out, "raw")
    os.makedirs(os.path.join(raw, "images" if modality == "image" else "audio", split), exist_ok=True)
    attempts = _attempts(family, modality, split, count, seed, image_px)
    tasks = [(family, modality, split, i, attempts[i], seed, raw, image_px) for i in range(count)]
    column = "image" if modality == "image" else "audio"
    manifest = os.path.join(raw, f"{modality}_text_{split}.tsv")
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(f"id\t{column}\ttext\tlabel\n")
        for (_, _, _, index, *_), (rel, caption, label) in ordered_map(_make_one, tasks, workers=workers, chunksize=16):
            f.write(f"{modality}-{split}-{index:06d}\t{rel}\t{caption}\t{label}\n")
    return manifest


def _build(manifest: str, out: str, name: str, settings: BuildSettings, workers: int, text_file: bool = False) -> dict:
    plan = BuildPlan(manifest=Manifest(manifest, text_file=text_file), out_dir=out, name=name, settings=settings,
                     root=os.path.dirname(manifest), workers=workers)
    return build(plan, overwrite=True, progress=False, log=lambda msg: None)


def make_demo(out: str, *, family: str = "shapes", train_size: int = 2000, val_size: int = 256, image_px: int = 112,
              seed: int = 0, workers: int = 1, vocab_size: int = 1000, modalities: tuple[str, ...] = MODALITIES,
              log=print) -> dict:
    """Build the whole demo of one family under ``out``; returns {what: path}. ``modalities``: which pair
    kinds to draw (image-text, audio-text or both)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; available: {', '.join(FAMILIES)}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be some of {MODALITIES}, got {modalities}")
    media = FAMILIES[family]
    t0 = time.monotonic()
    out = os.path.abspath(out)
    settings = BuildSettings(image_size=image_px, max_audio_seconds=15.0, samples_per_shard=250)
    paths: dict[str, str] = {}
    captions: list[str] = []
    for modality in modalities:
        for split, count in (("train", train_size), ("val", val_size)):
            log(f"make_demo: drawing {count} {family} {modality} {split} samples and building their shards")
            manifest = write_raw(out, modality, split, count, seed, image_px, workers, family)
            shard_dir = os.path.join(out, "shards", f"{modality}-text", split)
            index = _build(manifest, shard_dir, f"{modality}-text-{split}", settings, workers)
            if index["total_samples"] != count:
                raise RuntimeError(f"demo build of {manifest} kept {index['total_samples']} of {count} samples")
            paths[f"{modality}-text/{split}"] = shard_dir
            if split == "train":
                with open(manifest, encoding="utf-8") as f:
                    captions.extend(line.rstrip("\n").split("\t")[2] for line in list(f)[1:])
        labels = os.path.join(out, f"labels_{modality}.txt")
        names = media.IMAGE_LABELS if modality == "image" else media.AUDIO_LABELS
        with open(labels, "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in names))
        paths[f"labels_{modality}"] = labels
    text_file = os.path.join(out, "raw", "text_train.txt")
    with open(text_file, "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in captions))
    log("make_demo: building text shards and training the tokenizer")
    paths["text/train"] = os.path.join(out, "shards", "text", "train")
    _build(text_file, paths["text/train"], "text-train", settings, 1, text_file=True)
    sidecar = train_tokenizer(out=os.path.join(out, "tokenizer"), shards=[], files=[text_file], vocab_size=vocab_size)
    paths["tokenizer"] = os.path.join(out, "tokenizer.json")
    log(f"make_demo: {family}: {train_size} train + {val_size} val samples per modality, vocabulary of "
        f"{sidecar['vocab_size']} pieces, in {time.monotonic() - t0:.1f} s")
    for what, path in paths.items():
        log(f"  {what:18s} {path}")
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Make a small procedural image/audio/text corpus (images and sounds with captions that "
                               "describe them), with train and validation splits, built into shards with the real "
                               "shard builder, plus a tokenizer and label files. Nothing is downloaded. Families: "
                               + "; ".join(f"{name}: {m.DESCRIPTION}" for name, m in FAMILIES.items()) + ".")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; see --force)")
    p.add_argument("--family", default="shapes", choices=list(FAMILIES),
                   help="which procedural corpus to draw (default: %(default)s)")
    p.add_argument("--train-size", type=int, default=2000, help="training samples per modality (default: %(default)s)")
    p.add_argument("--val-size", type=int, default=256,
                   help="validation samples per modality, all with distinct captions (default: %(default)s)")
    p.add_argument("--image-px", type=int, default=112, help="side of the square demo images (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=1000,
                   help="tokenizer vocabulary upper bound (the demo corpus gives fewer; default: %(default)s, the "
                        "tiny model's vocab_size)")
    p.add_argument("--seed", type=int, default=0, help="the same seed makes the same corpus (default: %(default)s)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes for drawing media and building shards (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.train_size < 1 or args.val_size < 1:
        p.error("--train-size and --val-size must be positive")
    if os.path.exists(args.out) and os.listdir(args.out):
        if not args.force:
            p.error(f"--out {args.out} exists and is not empty; pass --force to replace it")
        shutil.rmtree(args.out)
    make_demo(args.out, family=args.family, train_size=args.train_size, val_size=args.val_size, image_px=args.image_px,
              seed=args.seed, workers=args.workers, vocab_size=args.vocab_size,
              log=lambda msg: print(msg, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
