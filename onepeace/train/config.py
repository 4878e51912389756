"""Training settings: optimisation, the loss composition, checkpoints, logging, faults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class LossWeights:
    """Weight of each loss term; a term with weight 0 is not computed. Which terms exist depends on the
    tasks of a step: image-text gives itc and the image/text/pair DCL terms, audio-text gives atc and the
    audio/text/pair DCL terms, and image-, audio- or text-only tasks give their DCL term."""

    itc: float = 1.0  # image-text contrastive
    atc: float = 1.0  # audio-text contrastive
    dcl_text: float = 0.5  # text-only view (15% whole words masked)
    dcl_image: float = 1.0  # image-only view (75% masked)
    dcl_audio: float = 1.0  # audio-only view (55% masked in blocks)
    dcl_pair_text: float = 0.5
    dcl_pair_image: float = 0.5
    dcl_pair_audio: float = 0.5

    def validate(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ConfigError(f"train.loss_weights.{name}: must be >= 0, got {value}")


@dataclass
class TrainConfig:
    stage: int = 1  # 1: vision-language, 2: audio-language (documentation; the recipe sets the rest)
    steps: int = 1000  # optimizer updates
    grad_accum: int = 1  # micro-batches per update
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0  # linear warm-up; used when warmup_ratio is 0
    warmup_ratio: float = 0.0  # warm-up as a share of steps (stage 2: 0.1)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: float = 3.0
    precision: str = "bf16"  # bf16 | fp16 (CUDA only) | fp32
    loss_weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    deterministic: bool = False  # deterministic kernels: bit-identical reruns and resumes, somewhat slower

    # Warm start and freezing (stage 2 starts from a stage-1 model)
    init_from: str = ""  # an exported model directory, a run directory or a checkpoint directory
    init_exclude: list[str] = field(default_factory=list)  # fnmatch patterns of parameters not loaded
    reset: list[str] = field(default_factory=list)  # patterns re-initialised after loading (logit_scale)
    trainable: list[str] = field(default_factory=list)  # patterns; empty = everything trains

    # Bookkeeping
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    data_segment_steps: int = 500  # data streams restart (and reseed) every this many updates; a resume skips
    # at most one segment of data, a restart refills the shuffle buffers
    eval_every: int = 0  # 0 = only at the end (when data.eval names sets)
    max_nonfinite_in_a_row: int = 20
    # Stop signals are agreed on across ranks (a collective and a host read) every this many updates, not
    # every update: a signal waits at most this many steps, far below the minutes SLURM's warning gives
    signal_check_every: int = 10
    debug_checks: bool = False  # value checks inside forward (token ids, keep ranges): host syncs every step
    dist_timeout_s: int = 600  # a collective waiting longer than this fails the run instead of hanging

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"train.{msg}")

        need(self.stage in (1, 2), f"stage: must be 1 or 2, got {self.stage}")
        need(self.steps > 0, f"steps: must be positive, got {self.steps}")
        need(self.grad_accum >= 1, f"grad_accum: must be >= 1, got {self.grad_accum}")
        need(self.lr > 0, f"lr: must be positive, got {self.lr}")
        need(0 <= self.min_lr <= self.lr, f"min_lr: must be in [0, lr], got {self.min_lr}")
        need(self.warmup_steps >= 0, f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        need(self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay}")
        need(all(0 <= b < 1 for b in self.betas), f"betas: must be in [0, 1), got {self.betas}")
        need(self.grad_clip >= 0, f"grad_clip: must be >= 0 (0 = off), got {self.grad_clip}")
        need(self.precision in PRECISIONS, f"precision: must be one of {', '.join(PRECISIONS)}, got "
                                           f"{self.precision!r}")
        for name in ("log_every", "save_every", "keep_last", "data_segment_steps", "max_nonfinite_in_a_row",
                     "dist_timeout_s", "signal_check_every"):
            need(getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        need(self.eval_every >= 0, f"eval_every: must be >= 0, got {self.eval_every}")
        self.loss_weights.validate()

    @property
    def warmup(self) -> int:
        return round(self.warmup_ratio * self.steps) if self.warmup_ratio else self.warmup_steps
