"""Names shared by the shard writer (data_tools) and the shard readers (onepeace.data).

Kept in one module so that the two sides of the contract in docs/data_format.md cannot drift apart.
"""

from __future__ import annotations

FORMAT_VERSION = 1

KINDS = ("image-text", "audio-text", "image", "audio", "text")

# Tar members each kind of shard holds besides KEY.json.
KIND_MEMBERS: dict[str, tuple[str, ...]] = {
    "image-text": ("jpg", "txt"),
    "audio-text": ("flac", "txt"),
    "image": ("jpg",),
    "audio": ("flac",),
    "text": ("txt",),
}

# Modalities each kind of sample holds.
KIND_MODALITIES: dict[str, tuple[str, ...]] = {
    "image-text": ("image", "text"),
    "audio-text": ("audio", "text"),
    "image": ("image",),
    "audio": ("audio",),
    "text": ("text",),
}

# The only extensions a reader of our own builds ever decodes; everything else (pickle above all) is ignored.
MEMBER_EXTENSIONS = ("jpg", "flac", "txt", "json")

# Manifest columns each kind needs.
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "image-text": ("image", "text"),
    "audio-text": ("audio", "text"),
    "image": ("image",),
    "audio": ("audio",),
    "text": ("text",),
}
MANIFEST_COLUMNS = ("id", "image", "audio", "text", "label")

# Why a sample was left out of a build (rejects.jsonl "reason").
REJECT_REASONS = (
    "bad_row", "missing_column", "missing_file", "unreadable_file", "corrupt_image", "corrupt_audio",
    "audio_too_short", "empty_text", "invalid_utf8", "duplicate_id",
)

KEY_DIGITS = 9


def sample_key(row: int) -> str:
    """Tar key of the sample from data row ``row`` (0-based): unique, dot-free, stable across rebuilds."""
    return f"s{row:0{KEY_DIGITS}d}"


def shard_name(name: str, number: int) -> str:
    return f"{name}-{number:06d}.tar"


def shard_kinds_for_task(task_kind: str) -> tuple[str, ...]:
    """Shard kinds a task can read: a unimodal task may take its modality out of paired shards."""
    return {
        "image-text": ("image-text",),
        "audio-text": ("audio-text",),
        "image": ("image", "image-text"),
        "audio": ("audio", "audio-text"),
        "text": ("text", "image-text", "audio-text"),
    }[task_kind]


def task_members(task_kind: str) -> tuple[str, ...]:
    """Members a task decodes (KEY.json always)."""
    return KIND_MEMBERS[task_kind] + ("json",)
