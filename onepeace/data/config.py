"""Data settings as plain dataclasses, loadable with ``onepeace.config.from_dict`` from a recipe.

    data:
      tokenizer: data/demo/tokenizer.json
      train:
        image-text:                      # task name = key of the step dict the trainer gets
          batch_size: 32
          sources:
            - {shards: data/cc3m, weight: 3}
            - {shards: "data/coco/coco-{000000..000009}.tar", weight: 1}
      eval:
        image-text: {batch_size: 64, sources: [{shards: data/coco-val}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onepeace.config import ConfigError
from onepeace.data.formats import KINDS


@dataclass
class SourceConfig:
    """One dataset: a shard folder, index.json, or brace pattern of tars (``::`` joins several)."""

    shards: str = ""
    weight: float = 1.0  # share of a task's training samples drawn from this source (relative)

    def validate(self, path: str) -> None:
        if not self.shards:
            raise ConfigError(f"{path}.shards: name a shard folder, index.json or tar pattern")
        if not self.weight > 0:
            raise ConfigError(f"{path}.weight: must be positive, got {self.weight}")


@dataclass
class TaskConfig:
    """One task of a training step (or one evaluation set): what it reads and how many per batch."""

    kind: str = ""  # image-text | audio-text | image | audio | text; default: the task's name
    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 32  # per rank

    def validate(self, path: str) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"{path}.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.sources:
            raise ConfigError(f"{path}.sources: list at least one source")
        for i, source in enumerate(self.sources):
            source.validate(f"{path}.sources[{i}]")
        if self.batch_size <= 0:
            raise ConfigError(f"{path}.batch_size: must be positive, got {self.batch_size}")


@dataclass
class MaskConfig:
    """Masking ratios of the reference recipe (share of content tokens dropped from the encoder)."""

    image: float = 0.75  # image-only view, int(ratio * patches) random patches
    pair_image: float = 0.6875  # image in the pair: every patch the image-only view kept, plus some it masked
    text: float = 0.15  # text-only view, ceil(ratio * words) whole words
    # text in the pair. image-text: int(ratio * tokens) single tokens, first among those the text-only
    # view kept; audio-text: ceil(ratio * words) whole words
    pair_text: float = 0.40
    audio: float = 0.55  # audio-only view, blocks of audio_span frames
    pair_audio: float = 0.45
    audio_span: int = 5

    def validate(self, path: str) -> None:
        for name in ("image", "pair_image", "text", "pair_text", "audio", "pair_audio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{path}.{name}: must be in [0, 1), got {value}")
        if self.pair_image + self.image < 1:
            raise ConfigError(f"{path}.pair_image ({self.pair_image}) must be at least 1 - image ({1 - self.image:g}): "
                              "the pair view masks every patch the image-only view keeps")
        if self.audio_span <= 0:
            raise ConfigError(f"{path}.audio_span: must be positive, got {self.audio_span}")


@dataclass
class DataConfig:
    tokenizer: str = ""  # the sidecar PREFIX.json written by data_tools.train_tokenizer
    train: dict[str, TaskConfig] = field(default_factory=dict)
    eval: dict[str, TaskConfig] = field(default_factory=dict)
    num_workers: int = 2  # DataLoader worker processes per rank
    prefetch_factor: int = 2
    shuffle_buffer: int = 1000  # samples per task per worker
    seed: int = 0
    max_audio_seconds: float = 15.0  # also capped by the model's max_audio_frames
    min_audio_seconds: float = 1.0  # shorter clips are repeated up to this length
    image_crop_scale: tuple[float, float] = (0.9, 1.0)  # RandomResizedCrop area range in training
    masks: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self) -> None:
        for tasks in (self.train, self.eval):
            for name, task in tasks.items():
                if not task.kind:
                    task.kind = name
        self.validate()

    def validate(self) -> None:
        for section in ("train", "eval"):
            for name, task in getattr(self, section).items():
                task.validate(f"data.{section}.{name}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer: must be >= 1, got {self.shuffle_buffer}")
        if not 0 < self.min_audio_seconds <= self.max_audio_seconds:
            raise ConfigError("data: need 0 < min_audio_seconds <= max_audio_seconds")
        lo, hi = self.image_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.image_crop_scale: need 0 < low <= high <= 1, got {self.image_crop_scale}")
        self.masks.validate("data.masks")
