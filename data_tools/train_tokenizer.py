"""python -m data_tools.train_tokenizer: a SentencePiece BPE caption tokenizer and its JSON sidecar.

    python -m data_tools.train_tokenizer --shards shards/coco shards/audiocaps --out tokenizers/captions

Ids 0, 1, 2 are pad, unk and eos (fixed, see docs/data_format.md); there is no BOS because the model's
text adapter prepends a learned CLS embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator

import sentencepiece as spm

from data_tools.shard_scan import iter_samples
from onepeace.data.layout import MissingCaption, captions_of, parse_json_member
from onepeace.data.shards import ShardSpecError, resolve_shards
from onepeace.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, normalize_caption

PROG = "python -m data_tools.train_tokenizer"


def shard_texts(spec: str) -> Iterator[str]:
    """Every caption of every shard a spec names, in index order, read where the index's ``members`` say
    (KEY.txt lines for our own builds; a .txt or a JSON field for indexed WebDataset shards)."""
    for shard in resolve_shards(spec).shards:
        for sample in iter_samples(shard.url):
            try:
                meta = parse_json_member(sample.json) if sample.json is not None else None
            except ValueError:
                meta = None
            try:
                yield from captions_of(shard.layout.caption, sample.txt, meta)
            except MissingCaption:
                continue


def file_texts(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from f


def sentences(shards: list[str], files: list[str], lowercase: bool) -> Iterator[str]:
    for text in (t for spec in shards for t in shard_texts(spec)):
        text = normalize_caption(text, lowercase)
        if text:
            yield text
    for text in (t for path in files for t in file_texts(path)):
        text = normalize_caption(text, lowercase)
        if text:
            yield text


def train(*, out: str, shards: list[str], files: list[str], vocab_size: int, max_tokens: int = 70,
          lowercase: bool = True, character_coverage: float = 0.9995, max_sentences: int = 2_000_000,
          seed: int = 0, threads: int = 1) -> dict:
    """Train and write ``out.model`` and ``out.json``; returns the sidecar."""
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(shards, files, lowercase), model_prefix=os.path.abspath(out),
        model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
        character_coverage=character_coverage, input_sentence_size=max_sentences, shuffle_input_sentence=True,
        pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1, num_threads=threads, minloglevel=2,
        normalization_rule_name="nmt_nfkc")
    vocab = spm.SentencePieceProcessor(model_file=os.path.abspath(out) + ".model").get_piece_size()
    # vocab_size is the real size: a small corpus may give fewer pieces than asked for.
    sidecar = {"model_file": os.path.basename(out) + ".model", "vocab_size": vocab, "pad_id": PAD_ID,
               "unk_id": UNK_ID, "eos_id": EOS_ID, "lowercase": lowercase, "max_tokens": max_tokens}
    with open(os.path.abspath(out) + ".json", "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=1)
        f.write("\n")
    return sidecar


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Train a SentencePiece BPE tokenizer on captions from built shards and/or text "
                               "files; writes PREFIX.model and the sidecar PREFIX.json that onepeace.data reads.")
    p.add_argument("--shards", nargs="+", default=[], metavar="SPEC",
                   help="shard folders, index.json files or brace patterns of .tar paths; their captions are read (where index.json says)")
    p.add_argument("--text-file", nargs="+", default=[], metavar="FILE", help="plain text files, one sentence per line")
    p.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.json")
    p.add_argument("--vocab-size", type=int, default=8000,
                   help="number of pieces including pad/unk/eos (default: %(default)s); a smaller corpus may "
                        "give fewer, and the sidecar records the real size. Must not exceed the model's vocab_size")
    p.add_argument("--max-tokens", type=int, default=70,
                   help="captions are cut to this many tokens before EOS (default: %(default)s, as in the reference)")
    p.add_argument("--no-lowercase", action="store_true",
                   help="keep case (default: lowercase, as the reference does for captions)")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters the vocabulary must cover; rarer ones become unk (default: %(default)s)")
    p.add_argument("--max-sentences", type=int, default=2_000_000,
                   help="train on a random sample of at most this many sentences (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="SentencePiece trainer threads (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.shards and not args.text_file:
        parser.error("give --shards and/or --text-file")
    if args.vocab_size < 4:
        parser.error("--vocab-size must be at least 4")
    for path in args.text_file:
        if not os.path.isfile(path):
            parser.error(f"--text-file {path}: no such file")
    try:
        sidecar = train(out=args.out, shards=args.shards, files=args.text_file, vocab_size=args.vocab_size,
                        max_tokens=args.max_tokens, lowercase=not args.no_lowercase,
                        character_coverage=args.character_coverage, max_sentences=args.max_sentences,
                        seed=args.seed, threads=args.threads)
    except ShardSpecError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # SentencePiece reports an empty or unusable corpus this way
        print(f"{PROG}: error: training failed: {exc}", file=sys.stderr)
        return 1
    print(f"train_tokenizer: vocabulary of {sidecar['vocab_size']} pieces -> {args.out}.model, {args.out}.json",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
