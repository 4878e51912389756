"""Run the ``clip-benchmark`` package's own evaluation on an onepeace model.

    python -m onepeace.integrations.clip_benchmark eval --pretrained exports/vl-base \\
        --dataset wds/mydata --dataset_root data/wds/mydata --task zeroshot_retrieval --no_amp

Every argument is clip_benchmark's (``clip_benchmark eval --help``); this module registers a model type
``onepeace`` (the default here) whose ``--pretrained`` is an exported model directory, a run directory or a
checkpoint directory, and supplies what clip_benchmark's loaders return: ``(model, transform, tokenizer)``
where the model has ``encode_image`` / ``encode_text``, the transform turns a PIL image into the
CLIP-normalised tensor our evaluation uses, and the tokenizer turns a list of strings into padded ids.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..data.batching import normalize_images
from ..data.tokenizer import Tokenizer
from ..data.transforms import image_to_tensor
from ..runs import EVAL_RUNTIME, load_model

MODEL_TYPE = "onepeace"


class ClipInterface(nn.Module):
    """``encode_image(images)`` and ``encode_text(token_ids)`` as CLIP-style tools call them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images.float())

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, tokens == self.model.config.pad_id)


class ImageTransform:
    """PIL image -> float [3, S, S], resized and normalised as in onepeace evaluation."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        return normalize_images(image_to_tensor(image.convert("RGB"), self.size)[None])[0]


class TextTokenizer:
    """list[str] -> LongTensor [N, T]: EOS-terminated ids cut to the model's limit, right-padded."""

    def __init__(self, tokenizer: Tokenizer, max_text_tokens: int, pad_id: int):
        self.tokenizer, self.max_tokens, self.pad_id = tokenizer, max_text_tokens - 1, pad_id

    def __call__(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = [self.tokenizer.encode(t, self.max_tokens) for t in texts]
        out = torch.full((len(encoded), max((len(e) for e in encoded), default=1)), self.pad_id, dtype=torch.long)
        for i, ids in enumerate(encoded):
            out[i, : len(ids)] = torch.from_numpy(ids)
        return out


def load_onepeace(model_name: str, pretrained: str, cache_dir: str | None = None, device="cpu"):
    """clip_benchmark's loader contract: ``(model, transform, tokenizer)``."""
    loaded = load_model(pretrained, **EVAL_RUNTIME)
    if loaded.tokenizer is None:
        raise ValueError(f"{pretrained} names no tokenizer; export the model with its tokenizer")
    config = loaded.model.config
    model = ClipInterface(loaded.model).to(device).eval()
    return model, ImageTransform(config.image_size), TextTokenizer(Tokenizer(loaded.tokenizer),
                                                                   config.max_text_tokens, config.pad_id)


def register() -> None:
    """Make ``--model_type onepeace`` known to clip_benchmark (its registry is a module-level dict)."""
    import clip_benchmark.models as registry

    registry.TYPE2FUNC[MODEL_TYPE] = load_onepeace
    if MODEL_TYPE not in registry.MODEL_TYPES:
        registry.MODEL_TYPES.append(MODEL_TYPE)
    _fix_accuracy_for_numpy_2_4()


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """clip_benchmark's ``accuracy`` (share of rows whose target is among the top k logits), converting
    with ``.item()``: its own ``float(array of shape [1])`` is an error from NumPy 2.4 on."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def _fix_accuracy_for_numpy_2_4() -> None:
    """clip-benchmark 1.6.2's zero-shot classification fails under NumPy >= 2.4 (TypeError: only
    0-dimensional arrays can be converted to Python scalars); use the same computation where it does."""
    from clip_benchmark.metrics import zeroshot_classification

    try:
        zeroshot_classification.accuracy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), topk=(1,))
    except TypeError:
        zeroshot_classification.accuracy = topk_accuracy


def main(argv: list[str] | None = None) -> int:
    import clip_benchmark.cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        if "--model_type" not in argv:
            argv += ["--model_type", MODEL_TYPE]
        if "--model" not in argv:
            argv += ["--model", MODEL_TYPE]
    register()
    saved, sys.argv = sys.argv, ["clip_benchmark", *argv]
    try:
        clip_benchmark.cli.main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
