"""Which tar members of a sample hold its media, captions, id and label: the ``members`` of index.json.

Shards built by ``data_tools.build_shards`` follow one fixed layout (:data:`BUILT`). Shards made by
other tools (img2dataset, the LAION audio-dataset scripts) are read as they are: ``data_tools.index_shards``
writes their layout into the index.json it makes, and the readers follow it. Kept free of torch so the
data tools can use it cheaply.

Caption sources:

- ``txt``: the whole ``KEY.txt`` is one caption (img2dataset);
- ``txt-lines``: each non-empty line of ``KEY.txt`` is a caption (our builder: a cleaned caption never
  holds a newline, so one caption is one line and several captions are several lines);
- ``json:FIELD``: ``KEY.json``'s FIELD, a string or a list of strings (``json:caption``, ``json:text``).

Ids: ``json:FIELD`` (a string or number in KEY.json) or ``key`` (the tar key, ``__key__``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg")
TEXT_EXTENSIONS = ("txt",)


class LayoutError(ValueError):
    """A members spec that cannot be used; the message names the field."""


class MissingCaption(ValueError):
    """A sample whose caption source is absent, empty or of the wrong type (skipped and counted)."""


def check_caption_spec(spec: str) -> str:
    if spec in ("txt", "txt-lines") or (spec.startswith("json:") and len(spec) > 5):
        return spec
    raise LayoutError(f"caption source {spec!r}: use txt, txt-lines or json:FIELD (e.g. json:caption, json:text)")


@dataclass(frozen=True)
class Layout:
    image: tuple[str, ...] = ("jpg",)  # extensions that may hold the image, in order of preference
    audio: tuple[str, ...] = ("flac",)
    caption: str = "txt-lines"
    id: str = "json:id"
    label: str = "json:label"

    def __post_init__(self) -> None:
        for field_name, allowed in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS)):
            exts = getattr(self, field_name)
            bad = [e for e in exts if e not in allowed]
            if bad or not exts:
                raise LayoutError(f"members.{field_name}: {list(exts)} must name extensions among {', '.join(allowed)}")
        check_caption_spec(self.caption)
        for field_name in ("id", "label"):
            spec = getattr(self, field_name)
            if spec != "key" and not (spec.startswith("json:") and len(spec) > 5):
                raise LayoutError(f"members.{field_name}: {spec!r} must be 'key' or 'json:FIELD'")
        if self.label == "key":
            raise LayoutError("members.label: must be 'json:FIELD'")

    def members(self, modalities: tuple[str, ...]) -> frozenset[str]:
        """Tar member extensions a reader of these modalities needs to see (KEY.json always)."""
        out = {"json"}
        if "image" in modalities:
            out.update(self.image)
        if "audio" in modalities:
            out.update(self.audio)
        if "text" in modalities and not self.caption.startswith("json:"):
            out.add("txt")
        return frozenset(out)

    def to_json(self) -> dict:
        return {"image": list(self.image), "audio": list(self.audio), "caption": self.caption, "id": self.id,
                "label": self.label}

    @classmethod
    def from_json(cls, obj, where: str) -> Layout:
        if obj is None:
            return BUILT
        if not isinstance(obj, dict):
            raise LayoutError(f"{where}: 'members' must be an object")
        unknown = sorted(set(obj) - {"image", "audio", "caption", "id", "label"})
        if unknown:
            raise LayoutError(f"{where}: unknown members field(s) {', '.join(unknown)}")
        kw = {}
        for name in ("image", "audio"):
            if name in obj:
                if not (isinstance(obj[name], list) and all(isinstance(e, str) for e in obj[name])):
                    raise LayoutError(f"{where}: members.{name} must be a list of extensions")
                kw[name] = tuple(e.lower() for e in obj[name])
        for name in ("caption", "id", "label"):
            if name in obj:
                if not isinstance(obj[name], str):
                    raise LayoutError(f"{where}: members.{name} must be a string")
                kw[name] = obj[name]
        try:
            return cls(**kw)
        except LayoutError as exc:
            raise LayoutError(f"{where}: {exc}") from None


BUILT = Layout()  # what data_tools.build_shards writes (docs/data_format.md)


def parse_json_member(data: bytes) -> dict:
    """KEY.json as an object; raises ValueError (a bad sample) on anything else."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"KEY.json is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"KEY.json is a {type(meta).__name__}, not an object")
    return meta


def captions_of(spec: str, txt: bytes | None, meta: dict | None) -> list[str]:
    """The non-empty captions of one sample (whitespace collapsed); raises MissingCaption when none."""
    if spec.startswith("json:"):
        field_name = spec[5:]
        if meta is None or field_name not in meta:
            raise MissingCaption(f"KEY.json has no {field_name!r} field")
        value = meta[field_name]
        if isinstance(value, str):
            raw = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            raw = value
        else:
            raise MissingCaption(f"KEY.json {field_name!r} is a {type(value).__name__}, not a string or list of strings")
    else:
        if txt is None:
            raise MissingCaption("no .txt member")
        try:
            text = txt.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MissingCaption(f"KEY.txt is not UTF-8 ({exc})") from None
        raw = text.splitlines() if spec == "txt-lines" else [text]
    captions = [" ".join(c.split()) for c in raw]
    captions = [c for c in captions if c]
    if not captions:
        raise MissingCaption(f"empty caption ({spec})")
    return captions


def field_value(spec: str, meta: dict | None, key: str | None):
    """The id or label a spec names (None when absent); numbers become strings."""
    if spec == "key":
        return key
    value = (meta or {}).get(spec[5:])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) else None


def first_member(sample: dict, extensions: tuple[str, ...]) -> str | None:
    for ext in extensions:
        if ext in sample:
            return ext
    return None
