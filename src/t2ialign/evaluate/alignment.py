"""Image-text alignment judged by the world judge, per category (the paper's Table 1 / Sec. 4.2 view).

An image is aligned when the judge says good. Skips (the judge unsure) count as not aligned, so alignment
is conservative; the skip share is reported beside it. Per-attribute accuracy tells which named attribute
fails: the judge's most likely reading against the value the prompt asks for.
"""

from __future__ import annotations

import math

from t2ialign.world import vocab
from t2ialign.world.prompts import CATEGORIES

OBJECT_SPLITS = {"seen_objects": ("seen", "unseen_prompt"), "unseen_objects": ("unseen_object",)}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summarize(judged: list[dict]) -> dict:
    """{"n", "good", "bad", "skip", "alignment", "ci95", "attribute_accuracy"} of judged images."""
    n = len(judged)
    counts = {lab: sum(j["verdict"] == lab for j in judged) for lab in ("good", "bad", "skip")}
    attr = {}
    for kind in vocab.ATTRIBUTES:
        hits = [j["attribute_hits"][kind] for j in judged if kind in j["attribute_hits"]]
        if hits:
            attr[kind] = round(sum(hits) / len(hits), 4)
    lo, hi = wilson(counts["good"], n)
    return {
        "n": n,
        **counts,
        "alignment": round(counts["good"] / n, 4) if n else None,
        "ci95": [round(lo, 4), round(hi, 4)] if n else None,
        "skip_rate": round(counts["skip"] / n, 4) if n else None,
        "attribute_accuracy": attr,
    }


def alignment_report(judged: list[dict]) -> dict:
    """Per category, pooled and by object split (seen objects vs unseen objects)."""
    report = {"alignment": {}, "by_category": {}, "by_objects": {}}
    for c in CATEGORIES:
        rows = [j for j in judged if j["category"] == c]
        report["by_category"][c] = summarize(rows)
        report["alignment"][c] = report["by_category"][c]["alignment"]
        for name, splits in OBJECT_SPLITS.items():
            report["by_objects"].setdefault(name, {})[c] = summarize(
                [j for j in rows if j["split"] in splits]
            )
    return report


def format_table(report: dict) -> str:
    lines = [
        f"{'category':12s} {'objects':15s} {'n':>5s} {'aligned':>8s} {'95% CI':>15s} {'skip':>6s}  attribute accuracy"
    ]
    for c in CATEGORIES:
        for name, block in [("all", report["by_category"][c])] + [
            (k, v[c]) for k, v in report["by_objects"].items()
        ]:
            if not block["n"]:
                continue
            ci = f"{block['ci95'][0]:.0%}-{block['ci95'][1]:.0%}"
            attrs = ", ".join(f"{k} {v:.0%}" for k, v in block["attribute_accuracy"].items())
            lines.append(
                f"{c:12s} {name:15s} {block['n']:5d} {block['alignment']:8.1%} {ci:>15s} {block['skip_rate']:6.1%}  {attrs}"
            )
    return "\n".join(lines)
