"""``t2ialign report RUN``: one self-contained HTML page with the paper's tables and figures from this run.

Everything is read from the run directory: ``metrics.json`` (each stage writes its own section),
``evaluate/images.json`` (the evaluation images of each model) and the image files. Sections that the
run has not measured say so and name the command that measures them; no number is made up. The page
needs no network and no JavaScript: figures are drawn with matplotlib (Agg) and, like the images,
embedded as ``data:image/png;base64`` URIs; a Content-Security-Policy forbids loading anything else.
Every string that comes from the run (prompts, model names, paths) is HTML-escaped.

The last table of the page shows ``evaluate.claims.claims(metrics)``: the paper's claims with the measured
number and a verdict.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from t2ialign import __version__
from t2ialign.core.fsutil import atomic_write
from t2ialign.evaluate.claims import (
    ABLATIONS,
    COMMANDS,
    EVAL_SETS,
    GROUPS,
    PAPER_FIG3,
    QUESTIONS,
    SCORERS,
    VERDICTS,
    _finetune_name,
    _get,
    _isnum,
    _pct,
    ablation_of,
    claims,
    fig3_panels,
    model_roles,
)
from t2ialign.label.stats import PAPER_TABLE1
from t2ialign.world import vocab
from t2ialign.world.prompts import CATEGORIES

GRID_PER_CATEGORY = 2  # prompts per category and group in the image grids


# --- small helpers ------------------------------------------------------------------------------------------


class Raw(str):
    """HTML that is already safe (built here): table cells of this type are not escaped again."""


def _e(x: Any) -> str:
    return x if isinstance(x, Raw) else html.escape(str(x), quote=True)


def _num(x: Any, fmt: str = ".4g") -> str:
    return format(x, fmt) if _isnum(x) else "—"


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
    parts.append(_paired_tables(ev, cats, groups))
    return "\n".join(parts)


def _delta_cell(stat: Any) -> Any:
    """'+12.3 [+4.1, +20.5] 15/300' in points, bold when the interval excludes zero; '—' when missing."""
    if not isinstance(stat, dict) or not _isnum(stat.get("delta")):
        return "—"
    ci = stat.get("ci95")
    sizes = f" {_num(stat.get('n_prompts'), 'd')}/{_num(stat.get('n_images'), 'd')}"
    if not (isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci)):
        return f"{100 * stat['delta']:+.1f} [no interval]{sizes}"
    text = _e(f"{100 * stat['delta']:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]{sizes}")
    return Raw(f"<b>{text}</b>" if ci[0] > 0 or ci[1] < 0 else text)


def _paired_tables(ev: dict, cats: list[str], groups: list[str]) -> str:
    """The paired differences from base (evaluate.paired, paired_attribute): two tables and a forest plot."""
    paired = ev.get("paired")
    head = "<h3>Paired difference from base: same prompts and seeds, 95% interval by a bootstrap over prompts</h3>"
    if not isinstance(paired, dict) or not paired:
        why = "no model named base was evaluated" if "paired" in ev else "this evaluation predates them"
        return head + (
            f'<p class="nm">not measured ({_e(why)}; run <code>{_e(COMMANDS["evaluate"])}</code>)</p>'
        )
    parts = [
        head,
        "<p>Cells: model − base in points of aligned share, [95% interval], prompts / image pairs. Bold: the "
        "interval excludes zero, the only case a gain counts as reproduced. Prompts are resampled within "
        "each group and category, so pooled cells keep the evaluation's mix; intervals over few prompts "
        "(the unseen-prompt split has 4 count prompts) are rough and tend to be too narrow.</p>",
    ]
    rows = [
        [name, g] + [_delta_cell(_get(by_group, g, c)) for c in cats]
        for name, by_group in paired.items()
        for g in groups
        if isinstance(_get(by_group, g), dict)
    ]
    parts.append(_table(["model", "group"] + cats, rows))
    attrs = ev.get("paired_attribute")
    if isinstance(attrs, dict) and attrs:
        present = {
            a
            for m in attrs.values()
            if isinstance(m, dict)
            for v in m.values()
            if isinstance(v, dict)
            for a in v
        }
        names = [a for a in vocab.ATTRIBUTES if a in present] + sorted(present - set(vocab.ATTRIBUTES))
        rows = [
            [name, g] + [_delta_cell(_get(by_group, g, a)) for a in names]
            for name, by_group in attrs.items()
            for g in groups
            if isinstance(_get(by_group, g), dict)
        ]
        parts.append(
            "<h4>Per attribute: the judge reads the attribute the prompt names (over the prompts naming it)</h4>"
            + _table(["model", "group"] + names, rows)
        )
    png = _forest(paired, cats, groups)
    if png:
        parts.append(_img(png, "forest plot of paired differences from base"))
    return "\n".join(parts)


def _forest(paired: dict, cats: list[str], groups: list[str]) -> bytes | None:
    """One panel per group: each model's paired difference per category, points with 95% intervals."""
    models = list(paired)
    rows = [(c, m) for c in cats for m in models]
    if not any(_isnum(_get(paired, m, g, c, "delta")) for g in groups for c, m in rows):
        return None
    fig = _new_figure(2.6 * len(groups) + 1.5, 0.9 + 0.22 * len(rows))
    colors = [f"C{i % 10}" for i in range(len(models))]
    labeled: set[str] = set()  # one legend entry per model
    for i, g in enumerate(groups):
        # one x scale for every panel: the groups compare at a glance
        ax = fig.add_subplot(1, len(groups), i + 1, sharex=fig.axes[0] if fig.axes else None)
        for y, (c, m) in enumerate(rows):
            stat = _get(paired, m, g, c)
            d, ci = _get(stat, "delta"), _get(stat, "ci95")
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
    return _png(fig)


def _finetune_data(rep: dict) -> str:
    """What a fine-tuned model was trained on and how, from its finetune report."""
    parts = [
        f"n_model {rep.get('n_model', '—')}",
        f"n_pretrain {rep.get('n_pretrain', '—')}",
        f"weights {rep.get('weights', '—')}",
    ]
    if rep.get("n_pretrain") and rep.get("pretrain_data", "world") != "world":
        parts.append(f"D_pre from {Path(str(rep['pretrain_data'])).name}")
    if rep.get("top_k_per_prompt"):
        parts.append(f"best {rep['top_k_per_prompt']} per prompt")
    if "learning_rate" in rep:
        parts.append(f"lr {rep['learning_rate']:g}" + (" with EMA" if rep.get("use_ema") else ""))
    parts += [f"{rep.get('steps', '—')} steps", f"final loss {rep.get('final_loss', '—')}"]
    return ", ".join(parts)


def _no_column(rep) -> str:
    """The paper-column cell of a fine-tuned model that is no column of Table 2."""
    rep = rep if isinstance(rep, dict) else {}
    if rep.get("weights") == "uniform":
        return "none (a control: uniform weights)"
    if rep.get("top_k_per_prompt"):
        return f"none (best {rep['top_k_per_prompt']} per prompt)"
    if rep.get("weights") == "labels" and rep.get("n_pretrain"):
        return "none (the labels as weights, with D_pre)"
    return "(fine-tuned, ablation unknown)"


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
        # the column's representative in the claims, else another run of the same column, else none
        ab = by_model.get(name) or (ablation_of(ft, rep) if ft else None)
        paper = ABLATIONS.get(ab or "", {})
        data = _finetune_data(rep) if isinstance(rep, dict) else ("no finetune report" if ft else "—")
        rows.append(
            [
                name,
                paper.get("paper", _no_column(rep) if ft else "—"),
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
    # the Fig. 3 sets (4 images per prompt) where evaluate wrote them, not every judged image
    images = grids["sets"] if isinstance(grids.get("sets"), dict) and grids["sets"] else grids["images"]
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
        "one row per prompt, each model's images with the same seeds: the sets Fig. 3 shows (a model's first "
        "seeds; rejection sampling's best of the first candidates).</p>"
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
        "issues where the paper states none; a claim is not measured when a number it needs is missing. A "
        "gain of a model over base counts as reproduced only when its paired 95% interval (same prompts and "
        "seeds, bootstrap over prompts) lies above zero, and is within noise when the interval contains "
        "zero; a comparison of two scorers is within noise when their difference is under 1.96 standard "
        "errors.</p>"
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
