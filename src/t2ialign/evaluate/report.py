"""``t2ialign report RUN``: one self-contained HTML page with the paper's tables and figures from this run.

Everything is read from the run directory: ``metrics.json`` (each stage writes its own section),
``evaluate/images.json`` (the evaluation images of each model) and the image files. Sections that the
run has not measured say so and name the command that measures them; no number is made up. The page
needs no network and no JavaScript: figures are drawn with matplotlib (Agg) and, like the images,
embedded as ``data:image/png;base64`` URIs; a Content-Security-Policy forbids loading anything else.
Every string that comes from the run (prompts, model names, paths) is HTML-escaped.

``claims(metrics)`` lists the paper's claims with the measured number and a verdict (reproduced / not
reproduced / not measured); the last table of the page shows it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..fsutil import atomic_write
from ..labeling.stats import PAPER_TABLE1
from ..world.prompts import CATEGORIES

# reward.evaluate.EVAL_SETS and evaluate.models.GROUPS, repeated here because importing those modules
# loads torch; tests/test_report.py checks that they stay equal.
EVAL_SETS: tuple[str, ...] = ("seen_prompts", "unseen_prompts", "unseen_objects")
GROUPS: tuple[str, ...] = ("seen", "unseen_prompt", "unseen_object")
SCORERS: tuple[str, ...] = ("reward", "reward_no_pc", "reward_half_data", "clip_score")
QUESTIONS: tuple[str, ...] = ("alignment", "fidelity")

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"
# a comparison of two scorers whose difference is smaller than its noise (|z| < Z_CRIT) proves neither way
WITHIN_NOISE = "within noise"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, WITHIN_NOISE, NOT_MEASURED)
Z_CRIT = 1.96  # two-sided 95%
EPS = 1e-9  # numbers in metrics.json are rounded decimals: compare thresholds with a little slack

# Issue targets for the fine-tuned model (points of alignment, absolute).
COUNT_GAIN = {"seen": 0.25, "unseen_prompt": 0.15, "unseen_object": 0.15}
KEEP_TOLERANCE = 0.03  # color and background may lose at most this much
REJECTION_GAIN = 0.10  # best 4 of 16 vs the base model's 4 images
FIDELITY_TOLERANCE = 0.20  # fine-tuned FD at most 20% above the base model's (paper: FID 13.97 -> 16.76)

# Table 2 of the paper: its four columns, FID on MS-CoCo and average reward on the 120 tested prompts.
ABLATIONS: dict[str, dict[str, Any]] = {
    "original": {"paper": "Original model", "fid": 13.97, "reward": 0.43},
    "human_only": {"paper": "FT w/o unlabeled & pre-train", "fid": 26.59, "reward": 0.69},
    "no_pretrain": {"paper": "FT w/o pre-train", "fid": 21.02, "reward": 0.79},
    "full": {"paper": "FT (full)", "fid": 16.76, "reward": 0.79},
}
# Fig. 3 of the paper: what each panel compares and the numbers the text gives (Sec. 4.2, 4.3).
PAPER_FIG3: dict[str, dict[str, str]] = {
    "a": {
        "title": "(a) fine-tuned vs original",
        "alignment": "50% of queries get >= 7 of 9 votes for the fine-tuned model",
        "fidelity": "fine-tuning somewhat degrades image fidelity (15% compared to 10%)",
    },
    "b": {
        "title": "(b) original with rejection sampling vs original (4 random of 16)",
        "alignment": "46% of queries get >= 7 of 9 votes for rejection sampling",
        "fidelity": "without sacrificing image fidelity",
    },
    "c": {
        "title": "(c) fine-tuned vs original with rejection sampling",
        "alignment": "20% vs 10% (>= 7 votes for fine-tuned vs for rejection sampling)",
        "fidelity": "3% vs 20% (>= 7 votes for fine-tuned vs for rejection sampling)",
    },
}
COMMANDS = {
    "table1": "t2ialign label simulate RUN",
    "reward_eval": "t2ialign reward eval RUN",
    "evaluate": "t2ialign evaluate RUN --models base,finetuned,rejection",
    "table2": "t2ialign finetune RUN --name NAME (human_only: --no-unlabeled --beta 0; no_pretrain: --beta 0; "
    "full), then t2ialign evaluate RUN --models base,finetuned:human_only,finetuned:no_pretrain,finetuned:full",
    "side_by_side": "t2ialign label compare create|simulate|tally RUN NAME",
    "rejection_sampling": "t2ialign sample RUN",
    "grids": "t2ialign evaluate RUN",
    "timings": "make demo",
}
GRID_PER_CATEGORY = 2  # prompts per category and group in the image grids


# --- small helpers ------------------------------------------------------------------------------------------


class Raw(str):
    """HTML that is already safe (built here): table cells of this type are not escaped again."""


def _e(x: Any) -> str:
    return x if isinstance(x, Raw) else html.escape(str(x), quote=True)


def _get(d: Any, *keys: Any) -> Any:
    """d[k1][k2]... or None where a key is missing or a level is not a dict."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _isnum(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _pct(frac: Any, digits: int = 1) -> str:
    """A fraction as a percentage; "—" when not a number."""
    return f"{100 * frac:.{digits}f}%" if _isnum(frac) else "—"


def _num(x: Any, fmt: str = ".4g") -> str:
    return format(x, fmt) if _isnum(x) else "—"


def _points(delta: float) -> str:
    return f"{100 * delta:+.1f} points"


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _not_measured(command: str) -> str:
    return f'<p class="nm">not measured in this run (run <code>{_e(command)}</code>)</p>'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "figure") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="{_data_uri(png)}">'


def _new_figure(width: float, height: float):
    # matplotlib's object API without pyplot: no global state, no GUI backend; savefig uses Agg for PNG
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    # "tight" keeps legends placed outside the axes
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _bars(ax, labels: list[str], series: dict[str, list], errors: dict[str, list] | None = None) -> None:
    """Grouped bars: one group per label, one bar per series; None values are left out."""
    import numpy as np

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


# --- models in the evaluate section ---------------------------------------------------------------------------


def _finetune_name(name: str, model: dict) -> str | None:
    """The RUN/finetune/NAME of an evaluated model, or None when it is not a fine-tuned model of the run."""
    if not isinstance(model, dict) or model.get("kind") == "rejection":  # best-of on a model is no ablation
        return None
    path = model.get("path")
    if isinstance(path, str) and path:
        p = Path(path)
        if p.name == "pipeline" and p.parent.parent.name == "finetune":
            return p.parent.name
    if name.startswith("finetuned"):
        return name.split(":", 1)[1] if ":" in name else "default"
    return None


def ablation_of(name: str, report: dict | None) -> str | None:
    """Which column of Table 2 a fine-tuned model is: "human_only", "no_pretrain", "full", or None.

    From its finetune report (``n_pretrain``; ``use_unlabeled`` / ``beta`` where the report or its config
    has them; weights "labels" implies D_human only), else from its name (human_only, no_pretrain, full).
    """
    report = report if isinstance(report, dict) else {}
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    use_unlabeled = report.get("use_unlabeled", config.get("use_unlabeled"))
    if report.get("weights") == "labels":
        use_unlabeled = False
    beta = report.get("beta", config.get("beta"))
    n_pre = report.get("n_pretrain")
    pretrain = n_pre > 0 if _isnum(n_pre) else (beta > 0 if _isnum(beta) else None)
    key = name.lower().replace("-", "_")
    if pretrain is None:
        pretrain = False if ("no_pre" in key or "human" in key) else (True if "full" in key else None)
    if pretrain is True:
        return "full" if use_unlabeled is not False else None
    if pretrain is False:
        if use_unlabeled is None:
            use_unlabeled = False if "human" in key else (True if "no_pre" in key else None)
        return None if use_unlabeled is None else ("no_pretrain" if use_unlabeled else "human_only")
    return None


def model_roles(metrics: dict) -> dict[str, Any]:
    """Names of the evaluated models the claims compare: ``base``, ``finetuned`` (the model named
    "finetuned", else the full ablation, else the first fine-tuned one), ``rejection`` (the model named
    "rejection", else the first rejection-sampled model that is not fine-tuned), and ``ablations``
    ({ablation: model name} of Table 2)."""
    models = _get(metrics, "evaluate", "models") or {}
    finetune = metrics.get("finetune") if isinstance(metrics.get("finetune"), dict) else {}
    ablations: dict[str, str] = {}
    tuned: list[str] = []
    for name, m in models.items():
        ft = _finetune_name(name, m)
        if ft is None:
            continue
        tuned.append(name)
        ab = ablation_of(ft, finetune.get(ft))
        if ab is not None and ab not in ablations:
            ablations[ab] = name
    if "finetuned" in models:
        main = "finetuned"
    else:
        main = ablations.get("full") or (tuned[0] if tuned else None)
    rejection = "rejection" if "rejection" in models else None
    if rejection is None:
        for name, m in models.items():
            if isinstance(m, dict) and m.get("kind") == "rejection" and "fine" not in name:
                rejection = name
                break
    return {
        "base": "base" if "base" in models else None,
        "finetuned": main,
        "rejection": rejection,
        "tuned": tuned,
        "ablations": ablations,
    }


# --- Fig. 3 comparisons --------------------------------------------------------------------------------------


def _role_of_label(label: str) -> str | None:
    s = str(label).lower()
    if "reject" in s or "best" in s:
        return "rejection"
    if "fine" in s or s.startswith("ft"):
        return "finetuned"
    if any(w in s for w in ("orig", "base", "random", "pretrain")):
        return "original"
    return None


def fig3_panels(side_by_side: dict) -> dict[str, dict[str, Any]]:
    """{panel "a" | "b" | "c": {"name", "result", "swapped"}} for the comparisons that match a panel of
    the paper's Fig. 3, by the labels of their two models (or "fig3a"... in the name); ``swapped`` when the
    model under test is the comparison's second one. The first comparison (by name) of a panel wins."""
    wanted = {
        ("finetuned", "original"): "a",
        ("rejection", "original"): "b",
        ("finetuned", "rejection"): "c",
    }
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(side_by_side or {}):
        result = side_by_side[name]
        first = _role_of_label(_get(result, "comparison", "first_model") or "")
        second = _role_of_label(_get(result, "comparison", "second_model") or "")
        panel, swapped = wanted.get((first, second)), False
        if panel is None and (second, first) in wanted:
            panel, swapped = wanted[(second, first)], True
        if panel is None:
            for p in "abc":
                if f"fig3{p}" in name.lower().replace("_", "").replace("-", ""):
                    panel = p
        if panel is not None and panel not in out:
            out[panel] = {"name": name, "result": result, "swapped": swapped}
    return out


def _shares(tally: Any, swapped: bool) -> tuple[Any, Any]:
    """(share of queries with >= threshold votes for the model under test, the same for the other)."""
    first = _get(tally, "share_ge_threshold")
    if first is None:
        first = _get(tally, "share_ge_7")
    second = _get(tally, "share_second_ge_threshold")
    return (second, first) if swapped else (first, second)


# --- claims -----------------------------------------------------------------------------------------------------


def accuracy_z(a: float, b: float, n: int) -> float:
    """z statistic of the difference of two accuracies measured on the same ``n`` pairs.

    Uses the unpaired standard error sqrt(a(1-a)/n + b(1-b)/n): metrics.json keeps the accuracies, not each
    pair's outcome. On the same pairs two scorers' outcomes correlate positively, so this overstates the
    noise: a difference it calls significant is significant.
    """
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / n) if n > 0 else 0.0
    if se == 0.0:
        return 0.0 if a == b else math.copysign(math.inf, a - b)
    return (a - b) / se


def _claim(cid, section, claim, paper, criterion, command, measured=None, ok=None) -> dict[str, Any]:
    """``ok``: True (reproduced), False (not reproduced), None (not measured) or WITHIN_NOISE."""
    if ok is None:
        verdict = NOT_MEASURED
    elif ok == WITHIN_NOISE:
        verdict = WITHIN_NOISE
    else:
        verdict = REPRODUCED if ok else NOT_REPRODUCED
    return {
        "id": cid,
        "section": section,
        "claim": claim,
        "paper": paper,
        "measured": measured if measured is not None else "—",
        "criterion": criterion,
        "verdict": verdict,
        "command": command,
    }


def claims(metrics: dict) -> list[dict[str, Any]]:
    """The paper's claims, each with what this run measured and a verdict.

    Each claim is ``{"id", "section", "claim", "paper", "measured", "criterion", "verdict", "command"}``;
    verdict is "reproduced", "not reproduced", "within noise" (Fig. 4's comparisons of two scorers whose
    difference is not significant at 95%, see ``accuracy_z``) or "not measured" (a number it needs is missing).
    """
    out: list[dict[str, Any]] = []

    # Table 1: the base model struggles with counts, not with colors and backgrounds.
    run = _get(metrics, "table1", "run")
    goods = {c: _get(run, c, "good") for c in ("count", "color", "background")}
    ok = measured = None
    if all(_isnum(v) for v in goods.values()):
        measured = ", ".join(f"{c} {v:.1f}%" for c, v in goods.items())
        ok = goods["count"] < goods["color"] and goods["count"] < goods["background"]
    out.append(
        _claim(
            "table1_counts_are_hard",
            "Table 1",
            "The base model struggles to generate the number of objects, but reliably generates colors and "
            "backgrounds (good labels per category)",
            "count 34.4%, color 70.4%, background 66.9% good",
            "count's good share below both color's and background's",
            COMMANDS["table1"],
            measured,
            ok,
        )
    )

    # Fig. 4: pairwise accuracy of the reward against CLIP score, without PC loss, on half the data.
    scorers = _get(metrics, "reward_eval", "scorers")
    n_pairs = _get(metrics, "reward_eval", "n_pairs") or {}
    fig4 = [
        (
            "clip_score",
            "Fig. 4(a)",
            "The reward predicts labelers' preferences better than CLIP score",
            "CLIP score",
        ),
        ("reward_no_pc", "Fig. 4(a)", "The prompt-classification loss improves the reward", "no PC loss"),
        ("reward_half_data", "Fig. 4(b)", "Half the images per prompt make a worse reward", "half data"),
    ]
    for other, section, text, short in fig4:
        for s in EVAL_SETS:
            a, b = _get(scorers, "reward", s, "mean"), _get(scorers, other, s, "mean")
            ok = measured = None
            if _isnum(a) and _isnum(b):
                sd = _get(scorers, "reward", s, "std")
                n = n_pairs.get(s)
                z = accuracy_z(a, b, n) if _isnum(n) else None
                measured = (
                    f"reward {_pct(a)}"
                    + (f" ± {_pct(sd)}" if _isnum(sd) and sd else "")
                    + f" vs {short} {_pct(b)}"
                    f" ({n if _isnum(n) else '?'} pairs"
                    + (f", z = {z:+.1f})" if z is not None and math.isfinite(z) else ")")
                )
                if z is None:
                    ok = a > b
                else:
                    ok = WITHIN_NOISE if abs(z) < Z_CRIT else z > 0
            paper = (
                "reward above CLIP score; ~80% on unseen prompts"
                if other == "clip_score"
                else "reward higher"
            )
            out.append(
                _claim(
                    f"fig4_{other}_{s}",
                    section,
                    f"{text} ({s.replace('_', ' ')})",
                    paper,
                    f"mean pairwise accuracy of reward > {short}, |z| >= {Z_CRIT} on the pairs",
                    COMMANDS["reward_eval"],
                    measured,
                    ok,
                )
            )

    # Sec. 4.2: fine-tuning improves count alignment, keeps color and background.
    models = _get(metrics, "evaluate", "models") or {}
    roles = model_roles(metrics)
    base, ft, rej = roles["base"], roles["finetuned"], roles["rejection"]

    def align(model, group, category):
        return _get(models, model, "alignment", group, category, "alignment") if model else None

    for g, gain in COUNT_GAIN.items():
        a, b = align(ft, g, "count"), align(base, g, "count")
        ok = measured = None
        if _isnum(a) and _isnum(b):
            measured = f"{ft} {_pct(a)} vs base {_pct(b)} ({_points(a - b)})"
            ok = a - b >= gain - EPS
        out.append(
            _claim(
                f"finetune_count_{g}",
                "Sec. 4.2, Fig. 2",
                f"Fine-tuning improves count alignment ({g.replace('_', ' ')} prompts)",
                "fine-tuned model adheres to the prompt's count (Fig. 2, Fig. 3a)",
                f"count alignment gain >= {100 * gain:.0f} points (issue target)",
                COMMANDS["evaluate"],
                measured,
                ok,
            )
        )
    deltas = {c: (align(ft, "all", c), align(base, "all", c)) for c in ("color", "background")}
    ok = measured = None
    if all(_isnum(a) and _isnum(b) for a, b in deltas.values()):
        measured = "; ".join(f"{c} {_pct(a)} vs {_pct(b)} ({_points(a - b)})" for c, (a, b) in deltas.items())
        ok = all(a - b >= -KEEP_TOLERANCE - EPS for a, b in deltas.values())
    out.append(
        _claim(
            "finetune_keeps_color_background",
            "Sec. 4.2",
            "Fine-tuning keeps color and background alignment (all evaluation prompts)",
            "base already reliable on colors and backgrounds; fine-tuned adheres to them too",
            f"each loses at most {100 * KEEP_TOLERANCE:.0f} points (issue target)",
            COMMANDS["evaluate"],
            measured,
            ok,
        )
    )

    # Sec. 4.3: rejection sampling.
    a, b = align(rej, "all", "all"), align(base, "all", "all")
    ok = measured = None
    if _isnum(a) and _isnum(b):
        measured = f"{rej} {_pct(a)} vs base {_pct(b)} ({_points(a - b)})"
        ok = a - b >= REJECTION_GAIN - EPS
    out.append(
        _claim(
            "rejection_sampling_alignment",
            "Sec. 4.3, Fig. 3(b)",
            "Rejection sampling (best 4 of 16 by reward) improves alignment over 4 random images",
            "46% of queries with >= 7 of 9 votes",
            f"alignment gain >= {100 * REJECTION_GAIN:.0f} points (issue target)",
            COMMANDS["evaluate"],
            measured,
            ok,
        )
    )

    # Table 2: fidelity and reward of the fine-tuned models.
    fd_ft, fd_base = (
        _get(models, ft, "fd_clip") if ft else None,
        _get(models, base, "fd_clip") if base else None,
    )
    ok = measured = None
    if _isnum(fd_ft) and _isnum(fd_base):
        ratio = fd_ft / fd_base if fd_base > 0 else (1.0 if fd_ft == 0 else math.inf)
        measured = f"FD_CLIP {ft} {fd_ft:.4g} vs base {fd_base:.4g} ({100 * (ratio - 1):+.0f}%)"
        ok = ratio <= 1 + FIDELITY_TOLERANCE + EPS
    out.append(
        _claim(
            "finetune_fidelity_cost",
            "Table 2",
            "With the pre-training loss, fine-tuning costs little fidelity",
            "FID 13.97 -> 16.76 (+20%)",
            f"fine-tuned FD at most {100 * FIDELITY_TOLERANCE:.0f}% above the base model's",
            COMMANDS["evaluate"],
            measured,
            ok,
        )
    )
    ab = roles["ablations"]
    fds = {k: _get(models, n, "fd_clip") for k, n in ab.items()}
    fds = {k: v for k, v in fds.items() if _isnum(v)}
    ok = measured = None
    if "human_only" in fds and "full" in fds:
        measured = ", ".join(f"{k} ({ab[k]}) {v:.4g}" for k, v in fds.items())
        ok = fds["human_only"] >= max(fds.values()) and fds["full"] <= min(fds.values())
    out.append(
        _claim(
            "table2_fidelity_order",
            "Table 2",
            "More diverse fine-tuning data gives better fidelity: human data only is worst, with unlabeled "
            "and pre-training data best",
            "FID 26.59 (human only) > 21.02 (w/o pre-train) > 16.76 (full)",
            "FD of human_only is the largest and FD of full the smallest among the ablations",
            COMMANDS["table2"],
            measured,
            ok,
        )
    )
    r_base = _get(models, base, "mean_reward") if base else None
    r_tuned = {n: _get(models, n, "mean_reward") for n in roles["tuned"]}
    r_tuned = {n: v for n, v in r_tuned.items() if _isnum(v)}
    ok = measured = None
    if _isnum(r_base) and r_tuned:
        measured = f"base {r_base:.3f}; " + ", ".join(f"{n} {v:.3f}" for n, v in r_tuned.items())
        ok = all(v > r_base for v in r_tuned.values())
    out.append(
        _claim(
            "table2_reward",
            "Table 2",
            "Every fine-tuned model has a higher average reward than the original",
            "0.43 -> 0.69 / 0.79 / 0.79",
            "mean reward of each fine-tuned model > base",
            COMMANDS["table2"],
            measured,
            ok,
        )
    )

    # Fig. 3: side-by-side votes.
    panels = fig3_panels(metrics.get("side_by_side") if isinstance(metrics.get("side_by_side"), dict) else {})
    fig3 = [
        ("a", "alignment", "The fine-tuned model wins on alignment against the original", "test"),
        ("a", "fidelity", "Fine-tuning somewhat degrades fidelity", "other"),
        ("b", "alignment", "Rejection sampling wins on alignment against random images", "test"),
        ("b", "fidelity", "Rejection sampling does not sacrifice fidelity", "not_other"),
        ("c", "alignment", "The fine-tuned model wins on alignment against rejection sampling", "test"),
    ]
    criteria = {
        "test": "more queries with >= 7 of 9 votes for the model under test than for the other",
        "other": "at least as many queries with >= 7 of 9 votes for the original as for the fine-tuned",
        "not_other": "no more queries with >= 7 of 9 votes for the original than for the model under test",
    }
    for panel, question, text, kind in fig3:
        p = panels.get(panel)
        ok = measured = None
        if p is not None:
            mine, other = _shares(_get(p["result"], question), p["swapped"])
            if _isnum(mine) and _isnum(other):
                measured = f"{p['name']}: >= 7 votes {_pct(mine)} for the model under test, {_pct(other)} for the other"
                ok = {"test": mine > other, "other": other >= mine, "not_other": other <= mine}[kind]
        out.append(
            _claim(
                f"fig3{panel}_{question}",
                f"Fig. 3({panel})",
                text,
                PAPER_FIG3[panel][question],
                criteria[kind],
                COMMANDS["side_by_side"],
                measured,
                ok,
            )
        )
    return out


# --- sections ----------------------------------------------------------------------------------------------------


def _section_header(metrics: dict, run_dir: Path) -> str:
    configs = {}
    for name, section in metrics.items():
        if isinstance(section, dict):
            for key in ("config", "settings"):
                if key in section:
                    configs[f"{name}.{key}"] = section[key]
    parts = [
        _table(
            ["", ""],
            [
                ["run directory", str(run_dir)],
                ["report written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
                ["t2ialign version", __version__],
                ["metrics.json sections", ", ".join(sorted(metrics)) or "none"],
            ],
            "kv",
        )
    ]
    if configs:
        parts.append(
            f"<details><summary>configs found ({len(configs)})</summary>"
            f"<pre>{_e(json.dumps(configs, indent=1, sort_keys=True))}</pre></details>"
        )
    else:
        parts.append("<p>No stage config recorded in metrics.json.</p>")
    timings = metrics.get("timings")
    if isinstance(timings, dict) and timings:
        rows = [[k, _num(v, ".1f")] for k, v in timings.items()]
        total = sum(v for v in timings.values() if _isnum(v))
        rows.append([Raw("<b>total</b>"), _num(total, ".1f")])
        parts.append("<h3>Timings (seconds per stage)</h3>" + _table(["stage", "seconds"], rows))
    else:
        parts.append("<h3>Timings</h3>" + _not_measured(COMMANDS["timings"]))
    return "\n".join(parts)


def _section_table1(metrics: dict) -> str:
    t1 = metrics.get("table1")
    if not isinstance(t1, dict) or not isinstance(t1.get("run"), dict):
        return _not_measured(COMMANDS["table1"])
    paper = t1.get("paper") if isinstance(t1.get("paper"), dict) else PAPER_TABLE1
    run = t1["run"]
    rows = []
    for c in [*CATEGORIES, "total", *sorted(set(run) - {*CATEGORIES, "total"})]:
        if c not in run and c not in paper:
            continue
        rows.append(
            [c]
            + [_num(_get(paper, c, v), ".1f") for v in ("good", "bad", "skip")]
            + [_num(_get(run, c, v), ".1f") for v in ("good", "bad", "skip")]
            + [_num(_get(run, c, "n"), "d")]
        )
    parts = [
        _table(
            [
                "category",
                "paper good %",
                "paper bad %",
                "paper skip %",
                "run good %",
                "run bad %",
                "run skip %",
                "run labels",
            ],
            rows,
        )
    ]
    sim = metrics.get("label_simulate")
    kappa = _get(sim, "fleiss_kappa")
    if _isnum(kappa):
        settings = _get(sim, "settings") or {}
        parts.append(
            f"<p>Fleiss' kappa between labelers: <b>{kappa:.3f}</b>"
            + (f" ({_e(', '.join(f'{k} {v}' for k, v in settings.items()))})" if settings else "")
            + "</p>"
        )
    else:
        parts.append("<p>Fleiss' kappa: not measured in this run.</p>")
    base = metrics.get("base_eval")
    by_cat = _get(base, "by_category")
    if isinstance(by_cat, dict):
        rows = [[c, _ci_cell(by_cat.get(c))] for c in CATEGORIES if c in by_cat]
        parts.append(
            "<h3>Base model judged automatically (<code>t2ialign evaluate-base</code>)</h3>"
            + _table(["category", "aligned (95% CI)"], rows)
        )
    return "\n".join(parts)


def _ci_cell(s: Any) -> str:
    if not isinstance(s, dict) or not s.get("n"):
        return "—"
    ci = s.get("ci95")
    ci_text = f" [{_pct(ci[0], 0)}–{_pct(ci[1], 0)}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"{_pct(s.get('alignment'))}{ci_text} n={s['n']}"


def _section_fig4(metrics: dict) -> str:
    results = metrics.get("reward_eval")
    scorers = _get(results, "scorers")
    if not isinstance(scorers, dict) or not scorers:
        return _not_measured(COMMANDS["reward_eval"])
    names = [s for s in SCORERS if s in scorers] + [s for s in scorers if s not in SCORERS]
    sets = list(EVAL_SETS) + sorted(
        {k for s in scorers.values() if isinstance(s, dict) for k in s} - set(EVAL_SETS)
    )
    n_pairs = results.get("n_pairs") or {}
    rows = []
    for name in names:
        row = [name]
        for k in sets:
            m, sd = _get(scorers, name, k, "mean"), _get(scorers, name, k, "std")
            row.append(_pct(m) + (f" ± {_pct(sd)}" if _isnum(sd) and sd else ""))
        rows.append(row)
    header = ["scorer"] + [f"{k.replace('_', ' ')} ({n_pairs.get(k, '?')} pairs)" for k in sets]
    seeds = results.get("seeds")
    parts = [
        _table(header, rows),
        f"<p>Mean ± std over seeds {_e(seeds)}; CLIP score has no seed.</p>" if seeds else "",
    ]
    fig = _new_figure(7.5, 3.4)
    ax = fig.add_subplot()
    series = {n: [_get(scorers, n, k, "mean") for k in sets] for n in names}
    errs = {n: [_get(scorers, n, k, "std") or 0.0 for k in sets] for n in names}
    _bars(ax, [k.replace("_", " ") for k in sets], series, errs)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("Agreement with labelers' preferences (paper Fig. 4)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    parts.append(_img(_png(fig), "Fig. 4 bar chart"))
    return "\n".join(parts)


def _section_evaluate(metrics: dict) -> str:
    ev = metrics.get("evaluate")
    models = _get(ev, "models")
    if not isinstance(models, dict) or not models:
        return _not_measured(COMMANDS["evaluate"])
    parts = []
    prompts = ev.get("prompts") if isinstance(ev.get("prompts"), dict) else {}
    if prompts:
        parts.append(
            "<p>Evaluation prompts: "
            + _e(
                ", ".join(
                    f"{len(v)} {g.replace('_', ' ')}" for g, v in prompts.items() if isinstance(v, list)
                )
            )
            + f"; reward model <code>{_e(ev.get('reward_model', '—'))}</code>.</p>"
        )
    rows = []
    for name, m in models.items():
        m = m if isinstance(m, dict) else {}
        by_group = m.get("mean_reward_by_group") or {}
        rows.append(
            [
                name,
                m.get("kind", "—"),
                f"{m.get('model_id', '—')} @ {m.get('model_revision', '—')}",
                _num(m.get("n_images"), "d"),
                _num(m.get("mean_reward"), ".3f"),
                ", ".join(f"{g} {_num(v, '.3f')}" for g, v in by_group.items()) or "—",
                _num(m.get("clip_score"), ".3f"),
                _num(m.get("fd_clip"), ".4g"),
                _num(m.get("fid_inception"), ".2f"),
                _num(m.get("seconds"), ".0f"),
            ]
        )
    parts.append(
        _table(
            [
                "model",
                "kind",
                "model id @ revision",
                "images",
                "mean reward",
                "by group",
                "CLIP score",
                "FD_CLIP ↓",
                "FID ↓",
                "s",
            ],
            rows,
        )
    )
    cats = [*CATEGORIES, "all"]
    groups = [*GROUPS, "all"]
    rows = []
    for name, m in models.items():
        for g in groups:
            cells = [_get(m, "alignment", g, c) for c in cats]
            if any(isinstance(s, dict) and s.get("n") for s in cells):
                rows.append([name, g] + [_ci_cell(s) for s in cells])
    parts.append(
        "<h3>Alignment by the world judge: share of good images, Wilson 95% interval</h3>"
        + _table(["model", "group"] + cats, rows)
    )
    for g in groups:
        series, errs = {}, {}
        for name, m in models.items():
            vals, err = [], []
            for c in cats:
                s = _get(m, "alignment", g, c)
                a, ci = _get(s, "alignment"), _get(s, "ci95")
                vals.append(a)
                ok = _isnum(a) and isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci)
                err.append([max(a - ci[0], 0.0), max(ci[1] - a, 0.0)] if ok else [0.0, 0.0])
            series[name], errs[name] = vals, err
        if not any(_isnum(v) for vals in series.values() for v in vals):
            continue
        fig = _new_figure(7.5, 3.2)
        ax = fig.add_subplot()
        _bars(ax, cats, series, errs)
        ax.set_ylim(0, 1)
        ax.set_ylabel("aligned (judge)")
        ax.set_title(f"Alignment per category, {g.replace('_', ' ')} prompts")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        parts.append(_img(_png(fig), f"alignment chart, {g}"))
    return "\n".join(parts)


def _section_table2(metrics: dict) -> str:
    models = _get(metrics, "evaluate", "models")
    if not isinstance(models, dict) or not models:
        return _not_measured(COMMANDS["table2"])
    finetune = metrics.get("finetune") if isinstance(metrics.get("finetune"), dict) else {}
    roles = model_roles(metrics)
    by_model = {n: k for k, n in roles["ablations"].items()}
    if roles["base"]:
        by_model[roles["base"]] = "original"
    rows = []
    for name, m in models.items():
        ft = _finetune_name(name, m)
        rep = finetune.get(ft) if ft else None
        ab = by_model.get(name)
        paper = ABLATIONS.get(ab or "", {})
        data = (
            f"n_model {rep.get('n_model', '—')}, n_pretrain {rep.get('n_pretrain', '—')}, "
            f"weights {rep.get('weights', '—')}, {rep.get('steps', '—')} steps, final loss {rep.get('final_loss', '—')}"
            if isinstance(rep, dict)
            else ("no finetune report" if ft else "—")
        )
        rows.append(
            [
                name,
                paper.get("paper", "(fine-tuned, ablation unknown)" if ft else "—"),
                data,
                _num(m.get("fd_clip") if isinstance(m, dict) else None, ".4g"),
                _num(m.get("fid_inception") if isinstance(m, dict) else None, ".2f"),
                _num(paper.get("fid"), ".2f"),
                _num(m.get("mean_reward") if isinstance(m, dict) else None, ".3f"),
                _num(paper.get("reward"), ".2f"),
            ]
        )
    parts = [
        _table(
            [
                "model",
                "paper column",
                "fine-tuning data",
                "FD_CLIP ↓ (run)",
                "FID ↓ (run)",
                "FID on MS-CoCo ↓ (paper)",
                "mean reward ↑ (run)",
                "avg reward ↑ (paper)",
            ],
            rows,
        ),
        "<p>Our fidelity is the Fréchet distance on CLIP features against renders of the same prompts (FID "
        "on Inception features only where weights were given); the paper's FID is on MS-CoCo, so compare "
        "orderings, not values.</p>",
        "<p>Paper (Table 2): "
        + _e(", ".join(f"{v['paper']} FID {v['fid']} / reward {v['reward']}" for v in ABLATIONS.values()))
        + "</p>",
    ]
    missing = [
        ABLATIONS[k]["paper"] for k in ("human_only", "no_pretrain", "full") if k not in roles["ablations"]
    ]
    if missing:
        parts.append(
            f"<p class='nm'>Ablations not evaluated in this run: {_e(', '.join(missing))} (run "
            f"<code>{_e(COMMANDS['table2'])}</code>)</p>"
        )
    return "\n".join(parts)


def _fig3_chart(result: dict, name: str) -> bytes | None:
    panels = []
    for q in QUESTIONS:
        t = result.get(q)
        hist = _get(t, "histogram")
        pct = _get(t, "percent")
        if not isinstance(pct, list) and isinstance(hist, list) and hist and all(_isnum(h) for h in hist):
            total = sum(hist)
            pct = [100.0 * h / total for h in hist] if total else None
        if isinstance(pct, list) and pct and all(_isnum(p) for p in pct):
            share = _get(t, "share_ge_threshold")
            panels.append((q, pct, _get(t, "threshold"), share if _isnum(share) else None))
    if not panels:
        return None
    fig = _new_figure(4.2 * len(panels), 3.0)
    comp = result.get("comparison") if isinstance(result.get("comparison"), dict) else {}
    for i, (q, pct, threshold, share) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        thr = threshold if _isnum(threshold) else 2 * (len(pct) - 1) // 3 + 1
        colors = ["#2e6fb8" if v >= thr else "#9dbbe0" for v in range(len(pct))]
        ax.bar(range(len(pct)), pct, color=colors, width=0.8)
        boxed = 100 * share if share is not None else sum(pct[int(thr) :])
        ax.set_title(f"{q}: {boxed:.0f}% of queries with >= {thr:g} votes", fontsize=9)
        ax.set_xticks(range(len(pct)))
        ax.set_xlabel(f"votes for {comp.get('first_model', 'the first model')}", fontsize=8)
        ax.set_ylabel("% of queries", fontsize=8)
    fig.suptitle(f"{comp.get('first_model', name)} vs {comp.get('second_model', '?')}", fontsize=10)
    return _png(fig)


def _section_fig3(metrics: dict) -> str:
    sbs = metrics.get("side_by_side")
    if not isinstance(sbs, dict) or not sbs:
        return _not_measured(COMMANDS["side_by_side"])
    panel_of = {p["name"]: k for k, p in fig3_panels(sbs).items()}
    parts = []
    for name in sorted(sbs):
        result = sbs[name] if isinstance(sbs[name], dict) else {}
        comp = result.get("comparison") if isinstance(result.get("comparison"), dict) else {}
        title = f"{name}: {comp.get('first_model', '?')} vs {comp.get('second_model', '?')}"
        info = ", ".join(f"{k} {comp[k]}" for k in ("queries", "raters_per_query") if k in comp)
        parts.append(f"<h3>{_e(title)}</h3>" + (f"<p>{_e(info)}</p>" if info else ""))
        panel = panel_of.get(name)
        if panel:
            parts.append(
                f"<p>Paper Fig. 3{_e(PAPER_FIG3[panel]['title'])}: alignment — "
                f"{_e(PAPER_FIG3[panel]['alignment'])}; fidelity — {_e(PAPER_FIG3[panel]['fidelity'])}.</p>"
            )
        thr = _get(result, "alignment", "threshold") or _get(result, "fidelity", "threshold") or 7
        first, second = comp.get("first_model", "first"), comp.get("second_model", "second")
        rows = []
        for q in QUESTIONS:
            t = result.get(q)
            if not isinstance(t, dict):
                rows.append([q, "—", "—", "—", "—", "—", "—"])
                continue
            share = t.get("share_ge_threshold", t.get("share_ge_7"))
            rows.append(
                [
                    q,
                    _num(t.get("queries"), "d"),
                    _num(t.get("incomplete"), "d"),
                    _pct(share),
                    _pct(t.get("share_second_ge_threshold")),
                    _pct(t.get("tie_share")),
                    " ".join(str(h) for h in t.get("histogram", [])) or "—",
                ]
            )
        parts.append(
            _table(
                [
                    "question",
                    "queries",
                    "incomplete",
                    f">= {thr} votes for {first}",
                    f">= {thr} votes for {second}",
                    "tie votes",
                    "histogram (queries by votes for the first, 0..n)",
                ],
                rows,
            )
        )
        by_split = result.get("by_split")
        if isinstance(by_split, dict) and by_split:
            rows = [
                [
                    split,
                    q,
                    _num(_get(v, q, "queries"), "d"),
                    _pct(_get(v, q, "share_ge_threshold")),
                    _pct(_get(v, q, "share_second_ge_threshold")),
                ]
                for split, v in by_split.items()
                for q in QUESTIONS
            ]
            parts.append(
                "<details><summary>by prompt split</summary>"
                + _table(["split", "question", "queries", ">= 7 for first", ">= 7 for second"], rows)
                + "</details>"
            )
        png = _fig3_chart(result, name)
        parts.append(_img(png, f"Fig. 3 histogram, {name}") if png else "<p>No histogram to draw.</p>")
    return "\n".join(parts)


def _section_rejection(metrics: dict) -> str:
    rs = metrics.get("rejection_sampling")
    if not isinstance(rs, dict) or not rs:
        return _not_measured(COMMANDS["rejection_sampling"])
    rows = []
    for key, s in rs.items():
        s = s if isinstance(s, dict) else {}
        kept, rand = s.get("mean_reward_kept"), s.get("mean_reward_random")
        rows.append(
            [
                key,
                s.get("model_id", "—"),
                f"best {s.get('keep', '?')} of {s.get('best_of', '?')}",
                _num(s.get("prompts"), "d"),
                _num(kept, ".4f"),
                _num(rand, ".4f"),
                _num(s.get("mean_reward_all"), ".4f"),
                _num(kept - rand, "+.4f") if _isnum(kept) and _isnum(rand) else "—",
                s.get("file", "—"),
            ]
        )
    return _table(
        [
            "selection",
            "model",
            "rule",
            "prompts",
            "reward kept",
            "reward random",
            "reward all",
            "kept − random",
            "file",
        ],
        rows,
    )


def _section_grids(
    grids: dict | None, categories: dict[str, str], image_bytes: Callable[[str], bytes | None]
) -> str:
    if not isinstance(grids, dict) or not isinstance(grids.get("images"), dict) or not grids["images"]:
        return _not_measured(COMMANDS["grids"])
    images = grids["images"]
    models = list(images)
    groups = grids.get("prompts") if isinstance(grids.get("prompts"), dict) else {}
    if not groups:  # no groups recorded: every prompt of the first model in one group
        groups = {"all": list(images[models[0]])}
    cache: dict[str, str | None] = {}

    def tag(sha: str) -> str:
        if sha not in cache:
            try:
                data = image_bytes(sha)
            except (OSError, ValueError):
                data = None
            cache[sha] = _data_uri(data) if data else None
        uri = cache[sha]
        if uri is None:
            return f'<span class="missing" title="{_e(sha)}">missing</span>'
        return f'<img class="px" alt="{_e(sha[:12])}" src="{uri}">'

    parts = [
        f"<p>Up to {GRID_PER_CATEGORY} prompts per category and group (the first in the evaluation's order); "
        "one row per prompt, each model's images with the same seeds.</p>"
    ]
    for g, texts in groups.items():
        if not isinstance(texts, list):
            continue
        chosen, per_cat = [], {}
        for t in texts:
            c = categories.get(t, "other")
            if per_cat.get(c, 0) < GRID_PER_CATEGORY:
                per_cat[c] = per_cat.get(c, 0) + 1
                chosen.append(t)
        order = {c: i for i, c in enumerate(CATEGORIES)}
        chosen.sort(key=lambda t: order.get(categories.get(t, "other"), len(order)))
        rows = []
        for t in chosen:
            cells = [Raw(f"<b>{_e(t)}</b><br><small>{_e(categories.get(t, 'other'))}</small>")]
            for m in models:
                shas = images[m].get(t) if isinstance(images[m], dict) else None
                cells.append(Raw("".join(tag(s) for s in shas if isinstance(s, str))) if shas else "—")
            rows.append(cells)
        parts.append(f"<h3>{_e(g.replace('_', ' '))}</h3>" + _table(["prompt", *models], rows, "grid"))
    return "\n".join(parts)


def _section_claims(metrics: dict) -> str:
    found = claims(metrics)
    rows = [
        [
            c["section"],
            c["claim"],
            c["paper"],
            c["measured"],
            c["criterion"],
            Raw(f'<span class="v {c["verdict"].replace(" ", "-")}">{_e(c["verdict"])}</span>'),
        ]
        for c in found
    ]
    counts = {v: sum(c["verdict"] == v for c in found) for v in VERDICTS}
    return (
        "<p>" + _e(", ".join(f"{n} {v}" for v, n in counts.items())) + ". Thresholds come from the project's "
        "issues where the paper states none; a claim is not measured when a number it needs is missing; a "
        "comparison of two scorers is within noise when their difference is under 1.96 standard errors.</p>"
        + _table(["where", "claim", "paper", "this run", "criterion", "verdict"], rows, "claims")
    )


# --- page ----------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
table.kv th { display: none; }
img.figure { display: block; max-width: 100%; margin: .8em 0; }
img.px { width: 96px; height: 96px; image-rendering: pixelated; margin: 1px; }
table.grid td { white-space: nowrap; } table.grid td:first-child { white-space: normal; max-width: 16em; }
.nm { color: #8a6d00; background: #fff8e1; padding: .3em .6em; display: inline-block; }
.missing { display: inline-block; width: 96px; height: 96px; background: #eee; color: #999; text-align: center; }
.v { font-weight: bold; white-space: nowrap; }
.v.reproduced { color: #1b7a1b; } .v.not-reproduced { color: #b00020; } .v.not-measured { color: #777; }
.v.within-noise { color: #8a6d00; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
"""


def render_report(
    metrics: dict,
    run_dir: Path,
    grids: dict | None = None,
    categories: dict[str, str] | None = None,
    image_bytes: Callable[[str], bytes | None] = lambda sha: None,
) -> str:
    """The report as an HTML string: ``metrics`` as in metrics.json, ``grids`` as in evaluate/images.json,
    ``categories`` {prompt text: category}, ``image_bytes(sha256)`` the PNG of an image (None if missing)."""
    sections = [
        ("run", "Run", lambda: _section_header(metrics, run_dir)),
        ("table1", "Table 1: human feedback per category", lambda: _section_table1(metrics)),
        ("fig4", "Fig. 4: reward vs CLIP score, pairwise accuracy", lambda: _section_fig4(metrics)),
        (
            "evaluate",
            "Evaluation: alignment per model, group and category",
            lambda: _section_evaluate(metrics),
        ),
        (
            "table2",
            "Table 2: fine-tuning data ablation, fidelity and reward",
            lambda: _section_table2(metrics),
        ),
        ("fig3", "Fig. 3: side-by-side human evaluation", lambda: _section_fig3(metrics)),
        ("rejection", "Rejection sampling", lambda: _section_rejection(metrics)),
        ("grids", "Images", lambda: _section_grids(grids, categories or {}, image_bytes)),
        ("claims", "Paper vs this run", lambda: _section_claims(metrics)),
    ]
    body = []
    for sid, title, make in sections:
        try:
            content = make()
        except Exception as e:  # a malformed section must not hide the others; say what failed
            content = f'<p class="nm">could not render this section: {_e(type(e).__name__)}: {_e(e)}</p>'
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>\n{content}\n</section>')
    body.append(
        '<section id="metrics"><h2>metrics.json</h2><details><summary>the full file</summary>'
        f"<pre>{_e(json.dumps(metrics, indent=1, sort_keys=True))}</pre></details></section>"
    )
    toc = " · ".join(f'<a href="#{sid}">{_e(title.split(":")[0])}</a>' for sid, title, _ in sections)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>t2ialign report: {_e(run_dir.name)}</title><style>{CSS}</style></head><body>\n"
        "<h1>Aligning Text-to-Image Models using Human Feedback (Lee et al. 2023): this run</h1>\n"
        f"<nav>{toc}</nav>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(store, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (or ``out``) from the run's metrics.json, evaluate/images.json and images;
    atomically. Returns the path."""
    run_dir = Path(store.run_dir)
    metrics = store.read_metrics()
    grids_path = run_dir / "evaluate" / "images.json"
    grids = None
    if grids_path.is_file():
        try:
            grids = json.loads(grids_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{grids_path} is not valid JSON: {e}") from e
    categories = {p["text"]: p["category"] for p in store.list_prompts()}

    def image_bytes(sha: str) -> bytes | None:
        path = store.image_path(sha)
        return path.read_bytes() if path.is_file() else None

    page = render_report(metrics, run_dir, grids, categories, image_bytes)
    path = Path(out) if out is not None else run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page.encode("utf-8"))
    return path
