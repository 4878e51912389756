"""One evaluation set, start to finish: embeddings on every rank, gathered, then retrieval and/or
zero-shot classification. Collective: every rank calls it with its own stream of the same set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .classification import (DEFAULT_TEMPLATES, class_prompts, classification_chance, classification_metrics,
                             encode_prompts, label_targets, read_class_names, tokenize_prompts, top_k)
from .embeddings import embed_batches
from .errors import EvalError
from .gather import gather_rows, in_dataset_order
from .retrieval import caption_matches, retrieval_chance, retrieval_metrics

PAIR_KINDS = {"image-text": "image", "audio-text": "audio"}  # pair kind -> the modality paired with text
SINGLE_KINDS = ("image", "audio")
KINDS = (*PAIR_KINDS, *SINGLE_KINDS)


@dataclass
class Classifier:
    """Class names from a label file and the prompt that turns each into text."""

    classes: list[str]
    template: str
    label_file: str

    @classmethod
    def from_file(cls, label_file: str, template: str) -> "Classifier":
        classes = read_class_names(label_file)
        class_prompts(classes, template)  # check the template now, not after the whole pass
        return cls(classes, template, label_file)


@dataclass
class SetResult:
    name: str
    kind: str
    samples: int
    skipped: int
    metrics: dict[str, float] = field(default_factory=dict)  # fractions in [0, 1]
    chance: dict[str, float] = field(default_factory=dict)  # what a random model scores, same keys
    notes: list[str] = field(default_factory=list)
    captions: int = 0  # caption rows of a pair set (several per item in COCO- and Clotho-style sets)
    duplicates: dict[str, int | bool] = field(default_factory=dict)  # identical captions across items


def classified_modality(kind: str) -> str:
    return PAIR_KINDS.get(kind, kind)


def default_template(kind: str) -> str:
    return DEFAULT_TEMPLATES[classified_modality(kind)]


def needed_modalities(kind: str, classify: bool) -> tuple[str, ...]:
    if kind in PAIR_KINDS:
        return (PAIR_KINDS[kind], "text")
    if kind in SINGLE_KINDS:
        return (kind, "text") if classify else (kind,)
    raise EvalError(f"cannot evaluate kind {kind!r}: expected one of {', '.join(KINDS)}")


def check_supported(model_config, kind: str, name: str, classify: bool) -> None:
    """Fail before any data is read: the set's kind must be evaluable by this model."""
    if kind in SINGLE_KINDS and not classify:
        raise EvalError(f"evaluation set {name} is {kind}-only: zero-shot classification needs a label file")
    missing = [m for m in needed_modalities(kind, classify) if m not in model_config.modalities]
    if missing:
        raise EvalError(f"evaluation set {name} ({kind}) needs the model's {' and '.join(missing)} branch; "
                        f"this model has {', '.join(model_config.modalities)}")


def evaluate_stream(model, stream, *, name: str, kind: str, device: torch.device, tokenizer=None,
                    classifier: Classifier | None = None, prompt_batch_size: int = 64,
                    same_caption_is_correct: bool = True) -> SetResult:
    """Retrieval for pair sets (every caption of every item; identical captions of different items count
    as matches unless ``same_caption_is_correct`` is False, see ``retrieval``), classification when
    ``classifier`` is given (needs ``tokenizer``)."""
    check_supported(model.config, kind, name, classifier is not None)
    with torch.no_grad():
        class_emb = None
        if classifier is not None:
            if tokenizer is None:
                raise EvalError(f"evaluation set {name}: classification needs a tokenizer for the class prompts")
            tokens = tokenize_prompts(tokenizer, class_prompts(classifier.classes, classifier.template),
                                      model.config.max_text_tokens, model.config.pad_id)
            class_emb = encode_prompts(model, tokens, device, prompt_batch_size)
        local = embed_batches(model, stream, needed_modalities(kind, False), device)
    local.skipped = stream.bad_samples
    rows = in_dataset_order(gather_rows(local), stream.total_samples, name)
    if not len(rows):
        raise EvalError(f"evaluation set {name}: no readable samples ({rows.skipped} skipped)")
    result = SetResult(name, kind, len(rows), rows.skipped)
    if rows.skipped:
        result.notes.append(f"{rows.skipped} unreadable sample(s) skipped by the data pipeline")
    if kind in PAIR_KINDS:
        _retrieval(result, rows, PAIR_KINDS[kind], same_caption_is_correct)
    if classifier is not None:
        modality = classified_modality(kind)
        targets = label_targets(rows.labels, rows.ids, classifier.classes, name, classifier.label_file)
        result.metrics.update(classification_metrics(rows.emb[modality], targets, class_emb))
        result.chance.update(classification_chance(len(classifier.classes)))
        k = top_k(len(classifier.classes))
        if k < 5:
            result.notes.append(f"only {k} classes: top-{k} reported instead of top-5 (always 100%)")
    return result


def _retrieval(result: SetResult, rows, other: str, same_caption_is_correct: bool) -> None:
    position = {sample_id: i for i, sample_id in enumerate(rows.ids)}
    owners = torch.tensor([position[o] for o in rows.text_owner], dtype=torch.long)
    captions = rows.captions if len(rows.captions) == len(rows.text_owner) else None
    matches = caption_matches(owners, captions, same_caption_is_correct)
    result.captions = len(rows.text_owner)
    result.metrics.update(retrieval_metrics(rows.emb[other], rows.emb["text"], other, matches=matches))
    result.chance.update(retrieval_chance(len(rows), other, matches=matches, num_items=len(rows),
                                          num_captions=result.captions))
    if result.captions != len(rows):
        result.notes.append(f"{result.captions} captions for {len(rows)} items: an item counts as found when any "
                            "of its captions is retrieved; each caption has one correct item")
    if captions is not None:
        result.duplicates = {"captions": matches.twin_captions, "items": matches.twin_items,
                             "texts": matches.twin_groups, "counted_as_correct": same_caption_is_correct}
    if matches.twin_captions:
        rule = ("a retrieved item or caption whose caption is identical to the true one counts as correct"
                if same_caption_is_correct else "identical captions of other items count as misses (strict rule)")
        result.notes.append(f"{matches.twin_items} items share {matches.twin_groups} caption text(s) with another "
                            f"item ({matches.twin_captions} caption rows): {rule}")
