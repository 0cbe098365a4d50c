"""Every figure of the project, drawn once: the paper's Fig. 3 and Fig. 4 and the report's evaluation charts.

matplotlib's object API (``matplotlib.figure.Figure``) without pyplot: no global state, no GUI backend,
safe in a server thread; ``savefig`` uses Agg for PNG. Each ``fig*`` function takes the JSON its stage
writes to metrics.json (missing or malformed values are left out, never made up) and returns a Figure;
:func:`png_bytes` gives it as PNG bytes (the report embeds them), :func:`write_png` writes it to a file
(``t2ialign reward eval``'s reward_fig4.png, ``t2ialign label compare tally``'s fig3_NAME.png).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

QUESTIONS = ("alignment", "fidelity")  # the two questions of a side-by-side comparison (paper Sec. 4.2)
FIRST = "#2e6fb8"  # Fig. 3's bars at or above the threshold (the box), and the others
OTHERS = "#9dbbe0"


def _isnum(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _numbers(xs: Any) -> bool:
    return isinstance(xs, list) and bool(xs) and all(_isnum(x) for x in xs)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height))


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG; "tight" keeps legends placed outside the axes; no timestamp or version in it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def write_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.write_bytes(png_bytes(fig, dpi))
    return path


def grouped_bars(
    ax, labels: list[str], series: dict[str, list], errors: dict[str, list] | None = None
) -> None:
    """Grouped bars: one group per label, one bar per series; None values are left out. ``errors[name]``
    holds one error per value: a number (symmetric) or [below, above]."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        xs = [x[j] + i * width for j, v in enumerate(values) if _isnum(v)]
        ys = [v for v in values if _isnum(v)]
        yerr = None
        if errors is not None:
            err = [e for v, e in zip(values, errors[name], strict=True) if _isnum(v)]
            yerr = np.array(err, dtype=float).T if err else None
        ax.bar(xs, ys, width, yerr=yerr, capsize=2, label=name)
    ax.set_xticks(x + width * (n - 1) / 2)
    ax.set_xticklabels(labels, fontsize=8)


# --- the paper's figures -----------------------------------------------------------------------------------


def _fig3_panel(t: Any, n: Any) -> dict | None:
    """One question's panel: % of queries by votes for the first model, the threshold and the boxed share.
    From ``percent``, else from ``histogram``; a tally without a complete query draws empty bars."""
    if not isinstance(t, dict):
        return None
    pct, hist = t.get("percent"), t.get("histogram")
    if not _numbers(pct):
        total = sum(hist) if _numbers(hist) else 0
        if total:
            pct = [100.0 * h / total for h in hist]
        elif _numbers(hist) or (_isnum(n) and n >= 1):
            pct = [0.0] * (len(hist) if _numbers(hist) else int(n) + 1)
        else:
            return None
    thr = t.get("threshold")
    thr = int(thr) if _isnum(thr) else 2 * (len(pct) - 1) // 3 + 1  # two thirds, 7 of 9
    share = t.get("share_ge_threshold")
    if not _isnum(share):
        share = sum(pct[thr:]) / 100 if sum(pct) else None
    return {"percent": pct, "threshold": thr, "share": share, "queries": t.get("queries")}


def fig3(result: dict[str, Any], title: str | None = None) -> Figure | None:
    """The paper's Fig. 3 for one comparison (``sidebyside.tally``): for alignment and for fidelity, the %
    of queries by the number of votes for the first model (0..n), the bars at or above the threshold in a
    black box with their total share, one y scale for both panels as in the paper. None without a panel."""
    comp = result.get("comparison") if isinstance(result.get("comparison"), dict) else {}
    panels = {q: p for q in QUESTIONS if (p := _fig3_panel(result.get(q), comp.get("raters_per_query")))}
    if not panels:
        return None
    first = comp.get("first_model", "the first model")
    top = max(max(p["percent"]) for p in panels.values()) or 1.0
    fig = new_figure(4.5 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (question, p) in zip(axes, panels.items(), strict=True):
        pct, thr, n = p["percent"], p["threshold"], len(p["percent"]) - 1
        ax.bar(range(n + 1), pct, color=[FIRST if v >= thr else OTHERS for v in range(n + 1)], width=0.8)
        ax.add_patch(Rectangle((thr - 0.5, 0), n + 1 - thr, top * 1.08, fill=False, lw=1.5, ec="black"))
        box = "n/a" if p["share"] is None else f"{100 * p['share']:.0f}%"
        ax.text(thr - 0.4, top * 1.12, f">= {thr}: {box}", fontsize=9, va="bottom")
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks(range(n + 1))
        ax.set_xlabel(f"votes for {first} (of {n})")
        queries = f" ({p['queries']} queries)" if _isnum(p["queries"]) else ""
        ax.set_title(f"{question}{queries}")
    axes[0].set_ylabel("% of queries")
    fig.suptitle(title or f"{first} vs {comp.get('second_model', '?')} (paper Fig. 3)")
    return fig


def fig4(results: dict[str, Any], scorers: list[str] | None = None, sets: list[str] | None = None) -> Figure:
    """The paper's Fig. 4 from ``reward.accuracy.evaluate_rewards``'s results: pairwise accuracy per
    evaluation set (a group of bars) and scorer (a bar), the std over seeds as error bars; a set without
    pairs has no bar. ``scorers`` and ``sets`` choose and order them (default: as in ``results``)."""
    by_scorer = results.get("scorers") if isinstance(results.get("scorers"), dict) else {}
    scorers = list(by_scorer) if scorers is None else scorers
    if sets is None:
        sets = list(dict.fromkeys(k for s in by_scorer.values() if isinstance(s, dict) for k in s))
    n_pairs = results.get("n_pairs") if isinstance(results.get("n_pairs"), dict) else {}
    labels = [k.replace("_", " ") + (f"\n({n_pairs[k]} pairs)" if k in n_pairs else "") for k in sets]
    fig = new_figure(7.5, 3.5)
    ax = fig.add_subplot()
    series = {n: [_get(by_scorer, n, k, "mean") for k in sets] for n in scorers}
    errs = {n: [_get(by_scorer, n, k, "std") or 0.0 for k in sets] for n in scorers}
    grouped_bars(ax, labels, series, errs)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("Agreement with labelers' preferences (paper Fig. 4)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# --- the report's evaluation charts ------------------------------------------------------------------------


def alignment_chart(models: dict[str, Any], group: str, cats: list[str]) -> Figure | None:
    """Share of aligned images per category, one bar per model, Wilson 95% intervals as error bars, for one
    group of evaluation prompts (``evaluate``'s ``models[name]["alignment"][group][category]``)."""
    series, errs = {}, {}
    for name, m in models.items():
        vals, err = [], []
        for c in cats:
            s = _get(m, "alignment", group, c)
            a, ci = _get(s, "alignment"), _get(s, "ci95")
            vals.append(a)
            ok = _isnum(a) and isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci)
            err.append([max(a - ci[0], 0.0), max(ci[1] - a, 0.0)] if ok else [0.0, 0.0])
        series[name], errs[name] = vals, err
    if not any(_isnum(v) for vals in series.values() for v in vals):
        return None
    fig = new_figure(7.5, 3.2)
    ax = fig.add_subplot()
    grouped_bars(ax, cats, series, errs)
    ax.set_ylim(0, 1)
    ax.set_ylabel("aligned (judge)")
    ax.set_title(f"Alignment per category, {group.replace('_', ' ')} prompts")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def forest(paired: dict[str, Any], cats: list[str], groups: list[str]) -> Figure | None:
    """One panel per group: each model's paired difference from base per category (``evaluate.paired``),
    points with 95% intervals, in points of aligned share. None when there is no difference to draw."""
    models = list(paired)
    rows = [(c, m) for c in cats for m in models]
    if not any(_isnum(_get(paired, m, g, c, "delta")) for g in groups for c, m in rows):
        return None
    fig = new_figure(2.6 * len(groups) + 1.5, 0.9 + 0.22 * len(rows))
    colors = [f"C{i % 10}" for i in range(len(models))]
    labeled: set[str] = set()  # one legend entry per model
    for i, g in enumerate(groups):
        # one x scale for every panel: the groups compare at a glance
        ax = fig.add_subplot(1, len(groups), i + 1, sharex=fig.axes[0] if fig.axes else None)
        for y, (c, m) in enumerate(rows):
            d, ci = _get(paired, m, g, c, "delta"), _get(paired, m, g, c, "ci95")
            if not _isnum(d):
                continue
            color = colors[models.index(m)]
            if isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci):
                ax.plot([100 * ci[0], 100 * ci[1]], [y, y], color=color, lw=1.5)
            ax.plot([100 * d], [y], "o", color=color, ms=3.5, label=None if m in labeled else m)
            labeled.add(m)
        ax.axvline(0, color="gray", lw=0.8, ls="--")
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_yticks([k * len(models) + (len(models) - 1) / 2 for k in range(len(cats))])  # block centres
        ax.set_yticklabels(cats if i == 0 else [], fontsize=8)
        for k in range(1, len(cats)):
            ax.axhline(k * len(models) - 0.5, color="#ddd", lw=0.6)
        ax.set_title(g.replace("_", " "), fontsize=9)
        ax.set_xlabel("model − base (points)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Paired difference from base with 95% intervals (bootstrap over prompts)", fontsize=10)
    return fig


def _delta_point(entry: dict, group: str, cat: str) -> tuple[float, list[float]] | None:
    """(delta, [below, above]) in points of a loop round's paired difference; round 0 (base) is 0."""
    if entry.get("round") == 0:
        return 0.0, [0.0, 0.0]
    d, ci = _get(entry, "evaluate", group, cat, "delta"), _get(entry, "evaluate", group, cat, "ci95")
    if not _isnum(d):
        return None
    ok = isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci)
    return 100 * d, [max(100 * (d - ci[0]), 0.0), max(100 * (ci[1] - d), 0.0)] if ok else [0.0, 0.0]


def loop_curve(
    rounds: list[dict[str, Any]],
    groups: tuple[str, ...] = ("seen", "unseen_prompt", "unseen_object"),
    title: str | None = None,
) -> Figure | None:
    """The iterated loop (``loop.NAME.rounds``): per group, each category's paired difference from base
    (points, 95% bootstrap intervals as error bars) against the labeled images spent so far, one point
    per round (round 0 = base, 0 by definition); and FD_CLIP against the same. None before round 1."""
    pts = [r for r in rounds if isinstance(r, dict) and _isnum(r.get("labels_total"))]
    first = next((r["evaluate"] for r in pts if isinstance(r.get("evaluate"), dict)), None)
    if first is None:
        return None
    cats = [c for c in _get(first, groups[0]) or {} if c != "all"] + ["all"]
    fig = new_figure(3.1 * (len(groups) + 1) + 1.2, 3.0)
    for i, g in enumerate(groups):
        ax = fig.add_subplot(1, len(groups) + 1, i + 1)
        for j, c in enumerate(cats):
            got = [(r["labels_total"], p) for r in pts if (p := _delta_point(r, g, c)) is not None]
            if got:
                xs, ys, err = [x for x, _ in got], [p[0] for _, p in got], [p[1] for _, p in got]
                style = dict(color="black", lw=1.8) if c == "all" else dict(color=f"C{j}", lw=1)
                ax.errorbar(xs, ys, yerr=np.array(err).T, marker="o", ms=3, capsize=2, label=c, **style)
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{g.replace('_', ' ')} prompts", fontsize=9)
        ax.set_xlabel("labeled images so far", fontsize=8)
        if i == 0:
            ax.set_ylabel("alignment − base (points)", fontsize=8)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(1, len(groups) + 1, len(groups) + 1)
    fd = [(r["labels_total"], r["fd_clip"], r.get("round")) for r in pts if _isnum(r.get("fd_clip"))]
    ax.plot([x for x, _, _ in fd], [y for _, y, _ in fd], "o-", color="C7", ms=3, lw=1)
    for x, y, k in fd:
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_title("FD_CLIP to the reference (lower: closer)", fontsize=9)
    ax.set_xlabel("labeled images so far", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.legend(
        *fig.axes[0].get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    fig.suptitle(title or "Iterated loop: one point per round (0 = base)", fontsize=10)
    return fig


RL_PANELS = (  # (key of rl's guard curves, title): the reward, then the measures the guard watches
    ("reward", "probe reward"),
    ("alignment", "alignment (judge P(match) or CLIP score)"),
    ("fd_clip", "FD_CLIP to the base model"),
    ("saturation", "mean saturation"),
    ("diversity", "within-prompt diversity"),
)


def rl_guard(guard: dict[str, Any], reward_curve: list | None = None) -> Figure | None:
    """``t2ialign rl``'s guard curves: one panel per measure against the RL step, the training reward of
    every step under the probe reward; None when fewer than one evaluation was recorded."""
    steps = _get(guard, "step")
    if not _numbers(steps):
        return None
    panels = [(k, t) for k, t in RL_PANELS if _numbers(guard.get(k)) and len(guard[k]) == len(steps)]
    fig = new_figure(3.2 * len(panels), 2.8)
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(steps, guard[key], marker="o", color=FIRST, label="probe set")
        if key == "reward" and _numbers(reward_curve):
            ax.plot(range(1, len(reward_curve) + 1), reward_curve, color=OTHERS, label="training batch")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step")
    return fig
