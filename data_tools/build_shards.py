"""python -m data_tools.build_shards: media files + a manifest -> WebDataset shards + index.json.

    python -m data_tools.build_shards --manifest train.tsv --out shards/coco [--workers 8]
    python -m data_tools.build_shards --text-file corpus.txt --out shards/text
    python -m data_tools.build_shards --manifest train.tsv --out shards/coco/part-003 --num-splits 16 --split-index 3
    python -m data_tools.build_shards merge --out shards/coco shards/coco/part-*

The output layout is specified in docs/data_format.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from data_tools.builder import BuildError, BuildPlan, build
from data_tools.indexes import MergeError, merge
from data_tools.manifest import Manifest, ManifestError
from data_tools.manifest_layouts import LAYOUTS, LayoutManifest, detect_layout, parse_aliases
from data_tools.samples import BuildSettings
from onepeace.data.formats import KINDS
from onepeace.data.shards import ShardSpecError

PROG = "python -m data_tools.build_shards"


def parse_bytes(text: str) -> int:
    """'1000000', '500M', '1G', '1.5GB' -> bytes in powers of 1000; '1GiB', '512Mi' in powers of 1024."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:([kKmMgGtT])([iI]?))?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1000000, 500M, 1G or 1GiB")
    number, prefix, binary = m.group(1), (m.group(2) or "").lower(), bool(m.group(3))
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[prefix]
    return int(float(number) * (1024 if binary else 1000) ** power)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    d = BuildSettings()
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate, decode and normalise media listed in a manifest and write WebDataset shards, "
                    "DIR/index.json and DIR/rejects.jsonl (see docs/data_format.md). Bad samples are "
                    "rejected with a reason and the build goes on.",
        epilog=f"Merging split builds: {PROG} merge --out DIR PART_DIR [PART_DIR ...] (see '{PROG} merge --help').")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", metavar="FILE",
                     help="a .tsv (tab-separated, header line, no quoting), .csv (header line) or .jsonl (one "
                          "object per line) manifest with columns among id, image, audio, text, label; media paths "
                          "are relative to --root")
    src.add_argument("--text-file", metavar="FILE", help="a plain UTF-8 text file, one text sample per line (kind text)")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="the manifest's layout (default: detected from its suffix and header): wavcaps (WavCaps "
                        "JSON), clotho (Clotho CSV, 5 captions per file), audiocaps (AudioCaps CSV, with "
                        "--audio-pattern), onepeace (official ONE-PEACE TSVs), columns (any tsv/csv/jsonl with "
                        "--columns); without one, our own columns id, image, audio, text, label")
    p.add_argument("--columns", metavar="OURS=THEIRS,...", default=None,
                   help="read our columns from differently named ones, e.g. image=filepath,text=title (other "
                        "columns are ignored); a JSON list in the text column gives several captions")
    p.add_argument("--audio-pattern", metavar="PATTERN", default=None,
                   help="where each clip's file is, relative to --root, for wavcaps, clotho and audiocaps: the "
                        "layout's fields in braces and glob wildcards, e.g. 'Y{youtube_id}*.wav' or "
                        "'{stem}.flac' (default: wavcaps '{stem}.flac', clotho '{file_name}')")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for shards, index.json and rejects.jsonl")
    p.add_argument("--name", help="shard name prefix: DIR/NAME-000000.tar (default: the manifest's file name without suffix)")
    p.add_argument("--kind", choices=KINDS,
                   help="what each sample holds (default: inferred from the manifest's columns; needed when a "
                        "manifest has both image and audio columns)")
    p.add_argument("--root", metavar="DIR", help="folder that media paths are relative to (default: the manifest's folder)")
    p.add_argument("--image-size", type=positive_int, default=d.image_size,
                   help="images larger than this on their shorter side are scaled down to it (default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, choices=range(1, 96), metavar="1..95",
                   help="JPEG quality of re-encoded images (default: %(default)s)")
    p.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds,
                   help="longer audio is cut to its first this many seconds (default: %(default)s)")
    p.add_argument("--min-audio-seconds", type=float, default=d.min_audio_seconds,
                   help="shorter audio is rejected as audio_too_short (default: %(default)s)")
    p.add_argument("--sample-rate", type=positive_int, default=d.sample_rate,
                   help="audio is resampled to this rate in Hz (default: %(default)s, what the model expects)")
    p.add_argument("--samples-per-shard", type=positive_int, default=d.samples_per_shard,
                   help="start a new shard after this many samples (default: %(default)s)")
    p.add_argument("--max-shard-bytes", type=parse_bytes, default=d.max_shard_bytes,
                   help="start a new shard before one would grow past this size, e.g. 500M, 1G (10^9) or 1GiB (2^30) (default: 1G)")
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="processes decoding and encoding media; the output does not depend on it "
                        "(default: the CPUs this process may use, %(default)s here)")
    p.add_argument("--num-splits", type=positive_int, default=1,
                   help="build only every K-th row (rows r with r %% K == --split-index) so K jobs, e.g. a SLURM "
                        "array, can build disjoint parts into separate folders; join them with 'merge' (default: 1)")
    p.add_argument("--split-index", type=int, default=0, help="which part to build, 0 <= I < --num-splits (default: 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue a build that was interrupted, keeping its finished shards (same manifest and flags)")
    mode.add_argument("--overwrite", action="store_true", help="delete an earlier build of NAME in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the final summary is still printed)")
    return p


def merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Write one index.json and rejects.jsonl over several build folders (for example the parts "
                    "of a --num-splits build). Shards stay where they are; paths in the merged index are "
                    "relative to --out.")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="the manifest's layout (default: detected from its suffix and header): wavcaps (WavCaps "
                        "JSON), clotho (Clotho CSV, 5 captions per file), audiocaps (AudioCaps CSV, with "
                        "--audio-pattern), onepeace (official ONE-PEACE TSVs), columns (any tsv/csv/jsonl with "
                        "--columns); without one, our own columns id, image, audio, text, label")
    p.add_argument("--columns", metavar="OURS=THEIRS,...", default=None,
                   help="read our columns from differently named ones, e.g. image=filepath,text=title (other "
                        "columns are ignored); a JSON list in the text column gives several captions")
    p.add_argument("--audio-pattern", metavar="PATTERN", default=None,
                   help="where each clip's file is, relative to --root, for wavcaps, clotho and audiocaps: the "
                        "layout's fields in braces and glob wildcards, e.g. 'Y{youtube_id}*.wav' or "
                        "'{stem}.flac' (default: wavcaps '{stem}.flac', clotho '{file_name}')")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the merged index.json (not one of the parts)")
    p.add_argument("parts", nargs="+", metavar="PART_DIR", help="build folders, each holding an index.json")
    return p


def fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main_merge(argv: list[str]) -> int:
    args = merge_parser().parse_args(argv)
    try:
        index = merge(args.out, args.parts)
    except (MergeError, ShardSpecError) as exc:
        return fail(str(exc), 2)
    print(f"build_shards merge: {index['total_samples']} samples in {len(index['shards'])} shards from "
          f"{len(args.parts)} parts -> {os.path.join(args.out, 'index.json')}", file=sys.stderr)
    return 0


def open_manifest(args: argparse.Namespace, path: str):
    """Our own manifest format, or one of the public layouts (by --layout, --columns or the header)."""
    if args.text_file:
        return Manifest(path, text_file=True, kind="text")
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: no such file")
    layout = args.layout or ("columns" if args.columns else detect_layout(path))
    if layout is None:
        if args.audio_pattern:
            raise ManifestError("--audio-pattern is for the wavcaps, clotho and audiocaps layouts")
        return Manifest(path, kind=args.kind)
    aliases = parse_aliases(args.columns) if args.columns else None
    return LayoutManifest(path, layout, root=args.root, kind=args.kind, audio_pattern=args.audio_pattern,
                          aliases=aliases)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return main_merge(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.text_file and args.kind not in (None, "text"):
        parser.error(f"--text-file builds kind text, not {args.kind}")
    if not 0 <= args.split_index < args.num_splits:
        parser.error(f"--split-index {args.split_index} must be in [0, {args.num_splits})")
    if args.max_audio_seconds <= 0 or args.min_audio_seconds < 0 or args.min_audio_seconds > args.max_audio_seconds:
        parser.error("need 0 <= --min-audio-seconds <= --max-audio-seconds and --max-audio-seconds > 0")
    try:
        path = args.manifest or args.text_file
        manifest = open_manifest(args, path)
        root = os.path.abspath(args.root or os.path.dirname(manifest.path))
        if not os.path.isdir(root):
            return fail(f"--root {args.root}: no such folder", 2)
        name = args.name or os.path.splitext(os.path.basename(manifest.path))[0]
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
            return fail(f"--name {name!r}: use letters, digits, '_' and '-' only (no dots: they separate tar member "
                        "extensions)", 2)
        settings = BuildSettings(image_size=args.image_size, max_audio_seconds=args.max_audio_seconds,
                                 min_audio_seconds=args.min_audio_seconds, sample_rate=args.sample_rate,
                                 samples_per_shard=args.samples_per_shard, max_shard_bytes=args.max_shard_bytes,
                                 jpeg_quality=args.jpeg_quality)
        plan = BuildPlan(manifest=manifest, out_dir=os.path.abspath(args.out), name=name, settings=settings,
                         root=root, workers=args.workers, num_splits=args.num_splits, split_index=args.split_index)
        build(plan, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except ManifestError as exc:
        return fail(str(exc), 2)
    except BuildError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return fail("interrupted; finished shards are kept: run the same command with --resume to continue", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
