"""Pretraining objectives: cross-modal contrastive (CLIP style) and intra-modal denoising contrastive."""

from .contrastive import LOGIT_SCALE_MAX, bounded_logit_scale, contrastive_loss
from .denoising import denoising_loss, target_positions

__all__ = ["LOGIT_SCALE_MAX", "bounded_logit_scale", "contrastive_loss", "denoising_loss", "target_positions"]
