"""onepeace.data pipelines on real shards: batch structure, eval coverage, bad samples, seeds, weights."""

from __future__ import annotations

import os
import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from data_fixtures import corpus, index_of, make_image_text, read_tar, write_tar  # noqa: F401 (fixture)
from PIL import Image

from onepeace.config import ConfigError, from_dict, model_config
from onepeace.data import DataConfig, build_eval_loader, build_train_loader
from onepeace.distributed import rank_and_world_size
from onepeace.data.pipelines import Placement, TaskPipeline
from onepeace.data.shards import ShardSpecError
from onepeace.data.transforms import AudioTransform, ImageTransform, max_audio_samples, random_resized_crop_box
from onepeace.model.adapters import audio_frame_count

MODEL = model_config("tiny")  # 64 px images (16 patches), 250 audio frames, vocab 1000


def config(corpus, train=None, eval=None, **kw) -> DataConfig:
    return from_dict(DataConfig, {"tokenizer": corpus["tokenizer"], "num_workers": 0, "shuffle_buffer": 8,
                                  "train": train or {}, "eval": eval or {}, **kw}, "data")


def src(*folders: str) -> list[dict]:
    return [{"shards": f} for f in folders]


KEYS = {
    "image-text": {"images", "image_keep", "pair_image_keep", "text_tokens", "text_padding_mask", "text_keep",
                   "pair_text_keep", "ids", "labels"},
    "audio-text": {"audio", "audio_padding_mask", "audio_keep", "pair_audio_keep", "text_tokens", "text_padding_mask",
                   "text_keep", "pair_text_keep", "ids"},
    "image": {"images", "image_keep", "ids", "labels"},
    "audio": {"audio", "audio_padding_mask", "audio_keep", "ids"},
    "text": {"text_tokens", "text_padding_mask", "text_keep", "ids"},
}


EVAL_CAPTION_KEYS = {"caption_tokens", "caption_padding_mask", "caption_owner", "captions"}


def check_batch(kind: str, b: dict, size: int, eval: bool = False) -> None:
    expected = KEYS[kind] | (EVAL_CAPTION_KEYS if eval and "-" in kind else set())
    assert set(b) - {"labels"} == expected - {"labels"}, kind
    if eval and "-" in kind:  # every caption of every sample; one caption each in these shards
        assert b["caption_owner"].tolist() == list(range(size)) and len(b["captions"]) == size
        assert torch.equal(b["caption_tokens"], b["text_tokens"])
    assert ("labels" in b) >= ("labels" in KEYS[kind])  # text batches mixing sources may carry labels too
    assert len(b["ids"]) == size and all(isinstance(i, str) for i in b["ids"])
    if "images" in b:
        assert b["images"].shape == (size, 3, 64, 64) and b["images"].dtype == torch.float32
        assert -1.8 < b["images"].min() and b["images"].max() < 2.2  # CLIP-normalised range
        assert b["image_keep"].shape == (size, 4)  # 16 patches, 12 masked
        if "pair_image_keep" in b:
            assert b["pair_image_keep"].shape == (size, 5)  # 11 masked
            for k, pk in zip(b["image_keep"].tolist(), b["pair_image_keep"].tolist()):
                assert not set(k) & set(pk)  # the pair sees none of the patches the image-only view sees
    if "audio" in b:
        audio, pad = b["audio"], b["audio_padding_mask"]
        assert audio.dtype == torch.float32 and pad.dtype == torch.bool and audio.shape == pad.shape
        lengths = (~pad).sum(1)
        assert (lengths >= 16000).all() and (lengths <= max_audio_samples(16000, 15, 250)).all()
        assert (audio[pad] == 0).all()
        for row, n in zip(audio, lengths.tolist()):
            assert row[:n].mean().abs() < 1e-3 and (row[:n].std() - 1).abs() < 1e-2  # layer-normalised clip
        frames = audio_frame_count(lengths)
        for name, ratio in (("audio_keep", 0.55), ("pair_audio_keep", 0.45)):
            if name in b:
                for keep, f in zip(b[name].tolist(), frames.tolist()):
                    kept = [k for k in keep if k >= 0]
                    assert kept == sorted(set(kept)) and max(kept) < f
                    assert f - len(kept) == round(ratio * f)
    if "text_tokens" in b:
        tokens = b["text_tokens"]
        assert tokens.dtype == torch.int64 and tokens.shape[1] <= 71
        assert torch.equal(b["text_padding_mask"], tokens == 0)
        lengths = (~b["text_padding_mask"]).sum(1)
        for row, n, keep in zip(tokens, lengths.tolist(), b["text_keep"].tolist()):
            assert row[n - 1] == 2 and (row[: n - 1] != 2).all()  # EOS last
            assert n - 1 in keep  # EOS never masked
        assert b["text_keep"].dtype == torch.int64
    if "labels" in b:
        assert all(label is None or label.startswith("class") for label in b["labels"])


def test_training_steps_have_every_task_at_its_batch_size(corpus):
    it_, at = corpus["image-text"], corpus["audio-text"]
    sizes = {"image-text": 4, "audio-text": 3, "image": 2, "audio": 2, "text": 5}
    folders = {"image-text": [it_], "audio-text": [at], "image": [it_], "audio": [at], "text": [it_, at]}
    cfg = config(corpus, train={k: {"batch_size": sizes[k], "sources": src(*folders[k])} for k in sizes})
    loader = build_train_loader(cfg, MODEL, rank=0, world_size=1)
    stream = iter(loader)
    for _ in range(4):  # more than one pass over the audio shards: resampling never runs dry
        step = next(stream)
        assert set(step) == set(sizes)
        for kind, batch in step.items():
            check_batch(kind, batch, sizes[kind])
    assert loader.bad_samples == 0


def test_training_with_worker_processes(corpus):
    cfg = config(corpus, num_workers=2, train={"image-text": {"batch_size": 3, "sources": src(corpus["image-text"])},
                                               "text": {"batch_size": 2, "sources": src(corpus["audio-text"])}})
    stream = iter(build_train_loader(cfg, MODEL, rank=0, world_size=1))
    steps = [next(stream) for _ in range(4)]
    for step in steps:
        check_batch("image-text", step["image-text"], 3)
        check_batch("text", step["text"], 2)
    # Two workers with different seeds: consecutive steps come from different streams.
    assert steps[0]["image-text"]["ids"] != steps[1]["image-text"]["ids"]


def eval_ids(corpus, folder: str, rank: int = 0, world: int = 1, workers: int = 0, batch: int = 5) -> list[str]:
    cfg = config(corpus, num_workers=workers, eval={"image-text": {"batch_size": batch, "sources": src(folder)}})
    loader = build_eval_loader("image-text", cfg, MODEL, rank=rank, world_size=world)
    ids = []
    for b in loader:
        check_batch("image-text", b, len(b["ids"]), eval=True)
        ids.extend(b["ids"])
    return ids, loader


def test_evaluation_is_one_ordered_pass(corpus):
    everything = [f"it-{i}" for i in range(24)]
    ids, loader = eval_ids(corpus, corpus["image-text"])
    assert ids == everything and loader.num_samples == 24  # one worker: dataset order
    ids2, _ = eval_ids(corpus, corpus["image-text"], workers=2)
    assert sorted(ids2) == sorted(everything)
    assert ids2 == eval_ids(corpus, corpus["image-text"], workers=2)[0]  # deterministic order
    halves = [eval_ids(corpus, corpus["image-text"], rank=r, world=2, workers=2)[0] for r in (0, 1)]
    assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == sorted(everything)


def test_eval_images_are_resized_not_cropped(corpus):
    cfg = config(corpus, eval={"image": {"batch_size": 2, "sources": src(corpus["image-text"])}})
    batch = next(iter(build_eval_loader("image", cfg, MODEL, rank=0, world_size=1)))
    members = read_tar(os.path.join(corpus["image-text"], "it-000000.tar"))
    import io

    from onepeace.data.batching import normalize_images
    from onepeace.data.transforms import image_to_tensor

    image = Image.open(io.BytesIO(members["s000000000.jpg"])).convert("RGB")
    expected = normalize_images(image_to_tensor(image, 64)[None])[0]
    assert torch.allclose(batch["images"][0], expected)


def damaged_copy(corpus, tmp_path) -> str:
    folder = shutil.copytree(corpus["image-text"], str(tmp_path / "damaged"))
    path = os.path.join(folder, "it-000001.tar")
    members = read_tar(path)
    members["s000000006.jpg"] = b"\xff\xd8 not really a jpeg"
    del members["s000000008.txt"]
    members["s000000007.pickle"] = pickle.dumps(Boom(str(tmp_path / "pwned")))
    write_tar(path, members)
    return folder


class Boom:
    """Unpickling this writes a file: proof that pickle members are never decoded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_samples_are_skipped_counted_and_never_unpickled(corpus, tmp_path):
    folder = damaged_copy(corpus, tmp_path)
    ids, loader = eval_ids(corpus, folder)
    assert ids == [f"it-{i}" for i in range(24) if i not in (6, 8)]
    assert loader.bad_samples == 2
    assert not (tmp_path / "pwned").exists()

    cfg = config(corpus, train={"image-text": {"batch_size": 4, "sources": src(folder)}})
    train = build_train_loader(cfg, MODEL, rank=0, world_size=1)
    stream = iter(train)
    seen = [i for _ in range(30) for i in next(stream)["image-text"]["ids"]]
    assert "it-6" not in seen and "it-8" not in seen
    assert train.bad_samples > 0
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_shard_is_not_fatal(corpus, tmp_path):
    folder = shutil.copytree(corpus["image-text"], str(tmp_path / "trunc"))
    path = os.path.join(folder, "it-000002.tar")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    ids, loader = eval_ids(corpus, folder)
    lost = set(f"it-{i}" for i in range(24)) - set(ids)
    assert lost and lost <= {f"it-{i}" for i in range(10, 15)}  # only samples of the damaged shard
    assert loader.bad_samples >= 1


def test_training_streams_follow_seed_epoch_and_rank(corpus):
    cfg = config(corpus, train={"image-text": {"batch_size": 4, "sources": src(corpus["image-text"])}})

    def first(epoch=0, rank=0, seed=0):
        cfg.seed = seed
        stream = iter(build_train_loader(cfg, MODEL, epoch=epoch, rank=rank, world_size=2))
        batches = [next(stream)["image-text"] for _ in range(3)]
        return [i for b in batches for i in b["ids"]], batches[0]["images"]

    ids, images = first()
    ids_again, images_again = first()
    assert ids == ids_again and torch.equal(images, images_again)
    assert first(epoch=1)[0] != ids and first(rank=1)[0] != ids and first(seed=5)[0] != ids


def test_sources_are_drawn_by_weight_and_shards_by_size(corpus, tmp_path):
    other = make_image_text(str(tmp_path), 8, per_shard=3, name="other", labels=False)  # shards of 3, 3, 2
    task = from_dict(DataConfig, {"train": {"image-text": {"sources": [{"shards": corpus["image-text"], "weight": 3},
                                                                       {"shards": other, "weight": 1}]}}}).train["image-text"]
    pipe = TaskPipeline("image-text", task, data=DataConfig(), model=MODEL, tokenizer=_tok(corpus),
                        train=True)
    draws = pipe.train_urls(Placement(), np.random.default_rng(0))
    urls = Counter(next(draws)["url"] for _ in range(8000))
    from_other = {u: n for u, n in urls.items() if "/other/" in u}
    assert sum(from_other.values()) / 8000 == pytest.approx(0.25, abs=0.02)
    sizes = {os.path.join(other, s["path"]): s["samples"] for s in index_of(other)["shards"]}
    for url, n in from_other.items():
        assert n / sum(from_other.values()) == pytest.approx(sizes[url] / 8, abs=0.03)
    # With enough shards, every (rank, worker) slot draws from its own disjoint part.
    slots = [Placement(rank, 2, worker, 2) for rank in (0, 1) for worker in (0, 1)]
    parts = []
    for place in slots:
        draws = pipe.train_urls(place, np.random.default_rng(1))
        parts.append({next(draws)["url"] for _ in range(300)} - set(from_other))
    for i in range(4):
        for j in range(i):
            assert not parts[i] & parts[j]
    assert set().union(*parts) == {os.path.join(corpus["image-text"], s["path"])
                                   for s in index_of(corpus["image-text"])["shards"]}


def _tok(corpus):
    from onepeace.data.tokenizer import Tokenizer

    return Tokenizer(corpus["tokenizer"])


def test_image_crop_boxes():
    rng = np.random.default_rng(0)
    for w, h in ((100, 80), (64, 64), (300, 40)):
        for _ in range(200):
            left, top, cw, ch = random_resized_crop_box(w, h, (0.9, 1.0), rng)
            assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h
            if (w, h) != (300, 40):  # extreme aspect ratios fall back to a centre crop
                assert 0.9 * w * h - w - h <= cw * ch <= w * h
    image = Image.fromarray(np.zeros((80, 100, 3), dtype=np.uint8))
    out = ImageTransform(64, train=True)(image, rng)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8


def test_audio_crop_pad_and_normalise():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(50000).astype(np.float32) * 5 + 3
    train, evaluate = AudioTransform(20000, 16000, train=True), AudioTransform(20000, 16000, train=False)
    starts = set()
    for _ in range(20):
        out = train(wave, rng)
        assert out.shape == (20000,)
        starts.add(float(out[0]))
    assert len(starts) > 1  # random crops in training
    first = evaluate(wave, rng)
    assert torch.allclose(first, torch.nn.functional.layer_norm(torch.from_numpy(wave[:20000]), (20000,)))
    short = evaluate(np.array([1, 2, 3], dtype=np.float32), rng)
    assert short.shape == (16000,) and torch.equal(short[:6], short[3:9])  # repeated up to 1 s
    assert max_audio_samples(16000, 15.0, 750) == 240000
    n = max_audio_samples(16000, 15.0, 250)
    assert audio_frame_count(n) == 250 and audio_frame_count(n + 1) == 251


def test_config_is_strict_and_validated(corpus):
    with pytest.raises(ConfigError, match="wieght"):
        from_dict(DataConfig, {"train": {"image-text": {"sources": [{"shards": "x", "wieght": 2}]}}}, "data")
    with pytest.raises(ConfigError, match="data.train.mixed.kind"):
        from_dict(DataConfig, {"train": {"mixed": {"sources": [{"shards": "x"}]}}}, "data")
    with pytest.raises(ConfigError, match="pair_image"):
        from_dict(DataConfig, {"masks": {"pair_image": 0.2}}, "data")
    cfg = from_dict(DataConfig, {"train": {"captions": {"kind": "text", "sources": [{"shards": "x"}]}}}, "data")
    assert cfg.train["captions"].kind == "text" and cfg.masks.audio_span == 5


def test_wrong_shard_kind_and_small_model_vocab_are_named(corpus):
    cfg = config(corpus, train={"image-text": {"sources": src(corpus["audio-text"])}})
    with pytest.raises(ShardSpecError, match="holds audio-text shards"):
        build_train_loader(cfg, MODEL, rank=0, world_size=1)
    cfg = config(corpus, train={"text": {"sources": src(corpus["audio-text"])}})
    with pytest.raises(ValueError, match="vocab_size"):
        build_train_loader(cfg, model_config("tiny", vocab_size=50), rank=0, world_size=1)
    # 16 patches: the image view keeps 16 - int(11.2) = 5, more than the pair's int(4.8) = 4 masked ones.
    cfg = config(corpus, train={"image-text": {"sources": src(corpus["image-text"])}},
                 masks={"image": 0.7, "pair_image": 0.3})
    with pytest.raises(ConfigError, match="task image-text: .* must mask all 5 that the image-only view keeps"):
        build_train_loader(cfg, MODEL, rank=0, world_size=1)


def test_shard_specs_with_braces(corpus):
    from onepeace.data.shards import resolve_shards

    folder = corpus["image-text"]
    found = resolve_shards(f"{folder}/it-{{000001..000002}}.tar::{folder}/it-000004.tar")
    assert [os.path.basename(s.url) for s in found.shards] == ["it-000001.tar", "it-000002.tar", "it-000004.tar"]
    assert found.total == 5 + 5 + 4 and found.kind == "image-text"
    with pytest.raises(ShardSpecError, match="not listed"):
        resolve_shards(f"{folder}/it-000009.tar")


def test_rank_and_world_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world_size() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        rank_and_world_size()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert rank_and_world_size() == (0, 1)


def test_big_jpegs_are_decoded_only_as_large_as_needed():
    import io

    from onepeace.data.decode import decode_image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((600, 800, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    assert decode_image(buf.getvalue(), 100).size == (200, 150)  # 1/4 scale; 1/8 would be below 100
    assert decode_image(buf.getvalue(), 400).size == (800, 600)
    assert decode_image(buf.getvalue()).size == (800, 600)


def test_unreadable_shards_fail_loudly_instead_of_spinning(corpus, tmp_path):
    folder = shutil.copytree(corpus["image-text"], str(tmp_path / "gone"))
    for entry in index_of(folder)["shards"]:
        os.remove(os.path.join(folder, entry["path"]))
    cfg = config(corpus, train={"image-text": {"batch_size": 2, "sources": src(folder)}})
    with pytest.raises(RuntimeError, match="in a row"):
        next(iter(build_train_loader(cfg, MODEL, rank=0, world_size=1)))


def test_close_stops_worker_processes(corpus):
    from onepeace.data import loaders

    cfg = config(corpus, num_workers=2, train={"text": {"batch_size": 2, "sources": src(corpus["image-text"])}})
    loader = build_train_loader(cfg, MODEL, rank=0, world_size=1)
    stream = iter(loader)
    next(stream)
    workers = [w for it in list(loaders._LIVE_ITERATORS) if it._owner is loader for w in it._workers]
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    loader.close()
    assert not any(w.is_alive() for w in workers)


def _same_step(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys()
        for key, value in a[task].items():
            if torch.is_tensor(value):
                assert torch.equal(value, b[task][key]), (task, key)
            else:
                assert value == b[task][key], (task, key)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_from_its_position_continues_exactly(corpus, tmp_path, workers):
    """A position saved after k micro-batches (bad samples included) resumes with batch k + 1 of the
    uninterrupted stream, without decoding the samples before it."""
    folder = damaged_copy(corpus, tmp_path)
    cfg = config(corpus, num_workers=workers, train={
        "image-text": {"batch_size": 3, "sources": src(folder)},
        "audio": {"batch_size": 2, "sources": src(corpus["audio-text"])}})
    whole = build_train_loader(cfg, MODEL, epoch=3, rank=0, world_size=1)
    stream = iter(whole)
    steps = [next(stream) for _ in range(9)]
    cut = build_train_loader(cfg, MODEL, epoch=3, rank=0, world_size=1)
    stream = iter(cut)
    for _ in range(5):
        next(stream)
    position = cut.position()
    assert position.micro_batches == 5 and position.epoch == 3
    whole.close()
    cut.close()

    resumed = build_train_loader(cfg, MODEL, rank=0, world_size=1)
    resumed.set_epoch(3, type(position).from_dict(position.to_dict()))  # as stored in a checkpoint
    stream = iter(resumed)
    for expected in steps[5:]:
        _same_step(next(stream), expected)
    assert resumed.position().micro_batches == 9
    resumed.close()
    with pytest.raises(ValueError, match="cannot resume epoch 4"):
        resumed.set_epoch(4, position)
