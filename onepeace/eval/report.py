"""Results for people (a table next to chance level) and for programs (one JSON object)."""

from __future__ import annotations

from .zeroshot import SetResult


def metric_label(key: str) -> str:
    """'image_to_text/R@1' -> 'image->text R@1'; 'classification/top5' -> 'top-5 accuracy'."""
    group, _, metric = key.partition("/")
    if group == "classification" and metric.startswith("top"):
        return f"top-{metric[3:]} accuracy"
    return f"{group.replace('_to_', '->')} {metric}"


def format_table(result: SetResult, header: dict[str, str]) -> str:
    lines = [f"{k:<8} {v}" for k, v in header.items()]
    captions = f", {result.captions} captions" if result.captions and result.captions != result.samples else ""
    lines.append(f"{'set':<8} {result.name} ({result.kind}, {result.samples} samples{captions}, "
                 f"{result.skipped} skipped)")
    width = max([len(metric_label(k)) for k in result.metrics] + [6])
    lines += ["", f"{'metric':<{width}}  {'value':>7}  {'chance':>7}"]
    for key, value in result.metrics.items():
        lines.append(f"{metric_label(key):<{width}}  {100 * value:6.2f}%  {100 * result.chance[key]:6.2f}%")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def to_json(result: SetResult, header: dict[str, object]) -> dict:
    return {**header, "set": result.name, "kind": result.kind, "samples": result.samples,
            "skipped": result.skipped, "captions": result.captions, "duplicate_captions": result.duplicates,
            "metrics": result.metrics, "chance": result.chance, "notes": result.notes}
