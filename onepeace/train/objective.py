"""One pretraining step's losses, composed from the tasks of the step (the reference's two stages).

For an image-text batch (stage 1) the step runs: the text and the image alone, unmasked (their CLS
embeddings give the contrastive loss, their token outputs are the denoising targets); the text with 15%
of words dropped and the image with 75% of patches dropped, each decoded and contrasted against its
target; the pair with 40% of text tokens and 68.75% of patches dropped, against the unmasked pair
computed without gradient. Audio-text (stage 2) is the same with audio, except that, as in the reference,
the audio-only view's target is the audio part of that unmasked pair forward, not the audio-only forward.
Image-, audio- or text-only tasks add their denoising term. Each term has a weight
(``train.loss_weights``); weight 0 skips its work.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..losses import bounded_logit_scale, contrastive_loss, denoising_loss, target_positions
from ..model import ModalityOutput, OnePeace
from .config import LossWeights


class PairTask(NamedTuple):
    other: str  # the modality paired with text
    contrastive: str  # its contrastive term
    single_target_from_pair: bool  # the other modality's single-view DCL target: the unmasked pair's tokens


# Stage 1 (image-text) takes the image-only view's target from the image-only forward; stage 2
# (audio-text) takes the audio-only view's from the unmasked audio-text pair forward.
PAIR_TASKS = {"image-text": PairTask("image", "itc", False), "audio-text": PairTask("audio", "atc", True)}


def _raw_inputs(modality: str, batch: dict) -> dict:
    """``OnePeace.adapt`` keyword arguments for one modality of a batch."""
    if modality == "text":
        return {"text": batch["text_tokens"], "text_padding_mask": batch["text_padding_mask"]}
    if modality == "image":
        return {"image": batch["images"]}
    return {"audio": batch["audio"], "audio_padding_mask": batch["audio_padding_mask"]}


def _dcl(pred: torch.Tensor, masked: ModalityOutput, target: ModalityOutput) -> torch.Tensor:
    """Decoder predictions at the dropped positions against the unmasked encoder output."""
    valid = target_positions(masked.full_padding_mask, pred.shape[0], pred.shape[1], pred.device)
    return denoising_loss(pred, target.tokens.detach(), masked.masked_positions(), valid)


class PretrainObjective(nn.Module):
    """Wraps the model so the DeepSpeed engine sees one module whose forward returns the loss."""

    def __init__(self, model: OnePeace, task_kinds: dict[str, str], weights: LossWeights) -> None:
        super().__init__()
        self.model = model
        self.task_kinds = dict(task_kinds)
        self.weights = weights

    def forward(self, step: dict[str, dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: dict[str, torch.Tensor] = {}
        total = None
        for task, batch in step.items():
            if task not in self.task_kinds:
                raise KeyError(f"step has task {task!r} that the recipe does not name ({', '.join(self.task_kinds)})")
            for term, value in self._task_terms(self.task_kinds[task], batch).items():
                weighted = getattr(self.weights, term) * value
                total = weighted if total is None else total + weighted
                terms[f"{task}/{term}"] = value.detach()
        if total is None:
            raise ValueError("every loss term of this step has weight 0: check train.loss_weights")
        return total, terms

    # ---------------------------------------------------------------------------------------------

    def _encode(self, adapted: dict, modalities: tuple[str, ...], batch: dict | None = None,
                keep_keys: tuple[str, ...] = ()) -> dict[str, ModalityOutput]:
        """One view: the given modalities of the shared adapter outputs, with the batch's keep tensors."""
        keeps = {f"{m}_keep": batch[key] for m, key in zip(modalities, keep_keys)}
        return self.model.forward_encoder(adapted={m: adapted[m] for m in modalities}, **keeps)

    def _single_terms(self, modality: str, adapted: dict, batch: dict, full: ModalityOutput | None = None) -> dict:
        """The DCL term of one modality's masked-only view (``full``: its unmasked output, if computed)."""
        term = f"dcl_{modality}"
        if getattr(self.weights, term) == 0:
            return {}
        if full is None:
            with torch.no_grad():
                full = self._encode(adapted, (modality,))[modality]
        masked = self._encode(adapted, (modality,), batch, (f"{modality}_keep",))
        return {term: _dcl(self.model.decode(masked)[modality], masked[modality], full)}

    def _task_terms(self, kind: str, batch: dict) -> dict[str, torch.Tensor]:
        w = self.weights
        if kind in ("image", "audio", "text"):
            return self._single_terms(kind, self.model.adapt(**_raw_inputs(kind, batch)), batch)
        if kind not in PAIR_TASKS:
            raise ValueError(f"unknown task kind {kind!r}")
        other, contrastive_term, single_from_pair = PAIR_TASKS[kind]
        adapted = self.model.adapt(**_raw_inputs("text", batch), **_raw_inputs(other, batch))  # once per batch
        terms: dict[str, torch.Tensor] = {}
        contrast = getattr(w, contrastive_term) > 0
        single_other = getattr(w, f"dcl_{other}") > 0
        pair_text, pair_other = w.dcl_pair_text > 0, getattr(w, f"dcl_pair_{other}") > 0
        with torch.set_grad_enabled(torch.is_grad_enabled() and contrast):
            text_full = self._encode(adapted, ("text",))["text"] if contrast or w.dcl_text > 0 else None
            other_full = (self._encode(adapted, (other,))[other]
                          if contrast or (single_other and not single_from_pair) else None)
        target = None  # the unmasked pair, computed once for every DCL term that reads it
        if pair_text or pair_other or (single_other and single_from_pair):
            with torch.no_grad():
                target = self._encode(adapted, ("text", other))
        if contrast:
            terms[contrastive_term] = contrastive_loss(self.model.embed(other, other_full),
                                                       self.model.embed("text", text_full),
                                                       bounded_logit_scale(self.model.logit_scale))
        terms.update(self._single_terms("text", adapted, batch, text_full))
        other_target = target[other] if single_from_pair and target is not None else other_full
        terms.update(self._single_terms(other, adapted, batch, other_target))
        if pair_text or pair_other:
            masked = self._encode(adapted, ("text", other), batch, ("pair_text_keep", f"pair_{other}_keep"))
            pred = self.model.decode(masked)
            for modality, wanted in (("text", pair_text), (other, pair_other)):
                if wanted:
                    terms[f"dcl_pair_{modality}"] = _dcl(pred[modality], masked[modality], target[modality])
        return terms
