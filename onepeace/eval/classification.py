"""Zero-shot classification: each class name, put into a prompt template, is encoded as text; a sample's
prediction is the class whose prompt embedding is nearest to its own (ranks as in ``ranking``)."""

from __future__ import annotations

import torch

from .errors import EvalError
from .ranking import hits_at, target_ranks

DEFAULT_TEMPLATES = {"image": "a photo of {}", "audio": "a sound of {}"}
TOP_K = 5


def read_class_names(path: str) -> list[str]:
    """One class name per line (surrounding whitespace and blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise EvalError(f"label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"label file {path} cannot be read: {exc}") from None
    classes, first_line = [], {}
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise EvalError(f"label file {path}: line {number} repeats class {name!r} "
                            f"(first on line {first_line[name]})")
        first_line[name] = number
        classes.append(name)
    if len(classes) < 2:
        raise EvalError(f"label file {path} names {len(classes)} class(es); zero-shot classification needs at least 2")
    return classes


def class_prompts(classes: list[str], template: str) -> list[str]:
    if "{}" not in template:
        raise EvalError(f"prompt template {template!r} has no {{}} where the class name goes")
    return [template.replace("{}", name) for name in classes]


def tokenize_prompts(tokenizer, prompts: list[str], max_text_tokens: int, pad_id: int) -> torch.Tensor:
    """[C, T] token ids (EOS-terminated, right-padded), cut like captions to the model's text limit."""
    encoded = [tokenizer.encode(p, max_text_tokens - 1) for p in prompts]
    tokens = torch.full((len(encoded), max(len(e) for e in encoded)), pad_id, dtype=torch.long)
    for i, ids in enumerate(encoded):
        tokens[i, : len(ids)] = torch.from_numpy(ids)
    return tokens


def encode_prompts(model, tokens: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Class embeddings [C, D] on the CPU; every rank computes all of them (same forward count everywhere)."""
    pad_id = model.config.pad_id
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size].to(device)
        out.append(model.encode_text(chunk, chunk == pad_id).float().cpu())
    return torch.cat(out)


def label_targets(labels: list[str | None], ids: list[str], classes: list[str], set_name: str,
                  label_file: str) -> torch.Tensor:
    """Class index of every sample; every sample must carry a label that the label file lists."""
    unlabelled = [i for i, label in zip(ids, labels) if label is None]
    if unlabelled:
        raise EvalError(f"evaluation set {set_name}: {len(unlabelled)} of {len(ids)} samples have no label (e.g. "
                        f"{', '.join(unlabelled[:3])}); zero-shot classification needs a 'label' column for every row")
    index = {name: i for i, name in enumerate(classes)}
    unknown: dict[str, int] = {}
    for label in labels:
        if label not in index:
            unknown[label] = unknown.get(label, 0) + 1
    if unknown:
        listed = ", ".join(f"{name!r} ({n} samples)" for name, n in list(unknown.items())[:5])
        raise EvalError(f"evaluation set {set_name}: labels missing from label file {label_file}: {listed}"
                        f"{' and more' if len(unknown) > 5 else ''}")
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def top_k(num_classes: int) -> int:
    """Top-5, or top-C when there are fewer than 5 classes (then always 1.0; the report says so)."""
    return min(TOP_K, num_classes)


def classification_metrics(emb: torch.Tensor, targets: torch.Tensor, class_emb: torch.Tensor) -> dict[str, float]:
    """``{"classification/top1": ..., "classification/top5": ...}`` (``topC`` for C < 5 classes)."""
    ranks = target_ranks(emb, class_emb, targets)
    k = top_k(class_emb.shape[0])
    return {"classification/top1": hits_at(ranks, 1), f"classification/top{k}": hits_at(ranks, k)}


def classification_chance(num_classes: int) -> dict[str, float]:
    k = top_k(num_classes)
    return {"classification/top1": 1 / num_classes, f"classification/top{k}": k / num_classes}
