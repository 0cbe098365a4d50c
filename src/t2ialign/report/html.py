"""``t2ialign report RUN``: one self-contained HTML page with the paper's tables and figures from this run.

Everything is read from the run directory: ``metrics.json`` (each stage writes its own section),
``evaluate/images.json`` (the evaluation images of each model) and the image files. Sections that the
run has not measured say so and name the command that measures them; no number is made up. The page
needs no network and no JavaScript: figures are drawn by ``core.figures`` (matplotlib, Agg) and, like the
images, embedded as ``data:image/png;base64`` URIs; a Content-Security-Policy forbids loading anything
else. The page is rendered from the Jinja2 templates in ``report/templates`` (``core.html``, autoescaping
on): every string that comes from the run (prompts, model names, paths) is HTML-escaped.

The last table of the page shows ``evaluate.claims.claims(metrics)``: the paper's claims with the measured
number and a verdict.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from t2ialign import __version__
from t2ialign.core import figures
from t2ialign.core.fsutil import atomic_write
from t2ialign.core.html import macros, render, table
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
from t2ialign.report import methods
from t2ialign.world import vocab
from t2ialign.world.prompts import CATEGORIES

GRID_PER_CATEGORY = 2  # prompts per category and group in the image grids
TEMPLATES = Path(__file__).parent / "templates"


# --- small helpers ------------------------------------------------------------------------------------------


def _m() -> Any:
    """The section macros (``report/templates/sections.html``); each returns Markup."""
    return macros(TEMPLATES, "sections.html")


def _num(x: Any, fmt: str = ".4g") -> str:
    return format(x, fmt) if _isnum(x) else "—"


def _not_measured(command: str) -> Markup:
    return _m().not_measured(command)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _chart(fig, alt: str) -> Markup | None:
    """A ``core.figures`` figure as an embedded PNG (None for no figure)."""
    return None if fig is None else _m().figure(_data_uri(figures.png_bytes(fig)), alt)


# --- sections ----------------------------------------------------------------------------------------------------


def _section_header(metrics: dict, run_dir: Path) -> Markup:
    configs = {}
    for name, section in metrics.items():
        if isinstance(section, dict):
            for key in ("config", "settings"):
                if key in section:
                    configs[f"{name}.{key}"] = section[key]
    kv = [
        ["run directory", str(run_dir)],
        ["report written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
        ["t2ialign version", __version__],
        ["metrics.json sections", ", ".join(sorted(metrics)) or "none"],
    ]
    timings = metrics.get("timings")
    rows = []
    if isinstance(timings, dict) and timings:
        rows = [[k, _num(v, ".1f")] for k, v in timings.items()]
        total = sum(v for v in timings.values() if _isnum(v))
        rows.append([Markup("<b>total</b>"), _num(total, ".1f")])
    dump = json.dumps(configs, indent=1, sort_keys=True) if configs else ""
    return _m().header(kv, dump, len(configs), rows, COMMANDS["timings"])


def _section_table1(metrics: dict) -> Markup:
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
    header = ["category"] + [f"{w} {v} %" for w in ("paper", "run") for v in ("good", "bad", "skip")]
    sim = metrics.get("label_simulate")
    kappa = _get(sim, "fleiss_kappa")
    settings = (_get(sim, "settings") or {}) if _isnum(kappa) else {}
    by_cat = _get(metrics.get("base_eval"), "by_category")
    base_rows = None
    if isinstance(by_cat, dict):
        base_rows = [[c, _ci_cell(by_cat.get(c))] for c in CATEGORIES if c in by_cat]
    return _m().table1(
        [*header, "run labels"],
        rows,
        f"{kappa:.3f}" if _isnum(kappa) else None,
        ", ".join(f"{k} {v}" for k, v in settings.items()),
        base_rows,
    )


def _ci_cell(s: Any) -> str:
    if not isinstance(s, dict) or not s.get("n"):
        return "—"
    ci = s.get("ci95")
    ci_text = f" [{_pct(ci[0], 0)}–{_pct(ci[1], 0)}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"{_pct(s.get('alignment'))}{ci_text} n={s['n']}"


def _section_fig4(metrics: dict) -> Markup:
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
    chart = _chart(figures.fig4(results, names, sets), "Fig. 4 bar chart")
    return _m().fig4(header, rows, results.get("seeds"), chart)


def _models_table(models: dict) -> tuple[list[str], list[list[str]]]:
    """One row per evaluated model: what it is, its images, reward, CLIP score, fidelity and time."""
    rows = []
    for name, m in models.items():
        m = m if isinstance(m, dict) else {}
        by_group = m.get("mean_reward_by_group") or {}
        rows.append(
            [
                name,
                m.get("kind", "—"),
                f"{m.get('model_id', '—')} @ {m.get('model_revision', '—')}",
                _num(m.get("guidance_scale"), "g"),
                _num(m.get("n_images"), "d"),
                _num(m.get("mean_reward"), ".3f"),
                ", ".join(f"{g} {_num(v, '.3f')}" for g, v in by_group.items()) or "—",
                _num(m.get("clip_score"), ".3f"),
                _num(m.get("fd_clip"), ".4g"),
                _num(m.get("fid_inception"), ".2f"),
                _num(m.get("seconds"), ".0f"),
            ]
        )
    header = ["model", "kind", "model id @ revision", "guidance", "images", "mean reward", "by group"]
    return [*header, "CLIP score", "FD_CLIP ↓", "FID ↓", "s"], rows


def _section_evaluate(metrics: dict) -> Markup:
    ev = metrics.get("evaluate")
    models = _get(ev, "models")
    if not isinstance(models, dict) or not models:
        return _not_measured(COMMANDS["evaluate"])
    prompts = ev.get("prompts") if isinstance(ev.get("prompts"), dict) else {}
    prompts_text = ", ".join(
        f"{len(v)} {g.replace('_', ' ')}" for g, v in prompts.items() if isinstance(v, list)
    )
    cats = [*CATEGORIES, "all"]
    groups = [*GROUPS, "all"]
    rows = []
    for name, m in models.items():
        for g in groups:
            cells = [_get(m, "alignment", g, c) for c in cats]
            if any(isinstance(s, dict) and s.get("n") for s in cells):
                rows.append([name, g] + [_ci_cell(s) for s in cells])
    charts = [_chart(figures.alignment_chart(models, g, cats), f"alignment chart, {g}") for g in groups]
    return _m().evaluate(
        prompts_text if prompts else "",
        ev.get("reward_model", "—"),
        _models_table(models),
        (["model", "group", *cats], rows),
        [c for c in charts if c is not None],
        _paired_tables(ev, cats, groups),
    )


def _delta_cell(stat: Any) -> Any:
    """'+12.3 [+4.1, +20.5] 15/300' in points, bold when the interval excludes zero; '—' when missing."""
    if not isinstance(stat, dict) or not _isnum(stat.get("delta")):
        return "—"
    ci = stat.get("ci95")
    sizes = f" {_num(stat.get('n_prompts'), 'd')}/{_num(stat.get('n_images'), 'd')}"
    if not (isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci)):
        return f"{100 * stat['delta']:+.1f} [no interval]{sizes}"
    text = f"{100 * stat['delta']:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]{sizes}"
    return _m().bold(text) if ci[0] > 0 or ci[1] < 0 else text


def _delta_rows(by_model: dict, groups: list[str], columns: list[str]) -> list[list[Any]]:
    return [
        [name, g] + [_delta_cell(_get(by_group, g, c)) for c in columns]
        for name, by_group in by_model.items()
        for g in groups
        if isinstance(_get(by_group, g), dict)
    ]


def _paired_tables(ev: dict, cats: list[str], groups: list[str]) -> Markup:
    """The paired differences from base (evaluate.paired, paired_attribute): two tables and a forest plot."""
    paired = ev.get("paired")
    if not isinstance(paired, dict) or not paired:
        why = "no model named base was evaluated" if "paired" in ev else "this evaluation predates them"
        return _m().paired(why, COMMANDS["evaluate"], None, None, None)
    attrs = ev.get("paired_attribute")
    attributes = None
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
        attributes = (["model", "group", *names], _delta_rows(attrs, groups, names))
    deltas = (["model", "group", *cats], _delta_rows(paired, groups, cats))
    forest = _chart(figures.forest(paired, cats, groups), "forest plot of paired differences from base")
    return _m().paired("", COMMANDS["evaluate"], deltas, attributes, forest)


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


def _section_table2(metrics: dict) -> Markup:
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
    header = ["model", "paper column", "fine-tuning data", "FD_CLIP ↓ (run)", "FID ↓ (run)"]
    header += ["FID on MS-CoCo ↓ (paper)", "mean reward ↑ (run)", "avg reward ↑ (paper)"]
    paper = ", ".join(f"{v['paper']} FID {v['fid']} / reward {v['reward']}" for v in ABLATIONS.values())
    missing = [
        ABLATIONS[k]["paper"] for k in ("human_only", "no_pretrain", "full") if k not in roles["ablations"]
    ]
    return _m().table2(header, rows, paper, ", ".join(missing), COMMANDS["table2"])


def _fig3_tally(result: dict, comp: dict) -> tuple[list[str], list[list[str]]]:
    """Fig. 3's numbers of one comparison, a row per question."""
    thr = _get(result, "alignment", "threshold") or _get(result, "fidelity", "threshold") or 7
    first, second = comp.get("first_model", "first"), comp.get("second_model", "second")
    rows = []
    for q in QUESTIONS:
        t = result.get(q)
        if not isinstance(t, dict):
            rows.append([q, "—", "—", "—", "—", "—", "—"])
            continue
        rows.append(
            [
                q,
                _num(t.get("queries"), "d"),
                _num(t.get("incomplete"), "d"),
                _pct(t.get("share_ge_threshold", t.get("share_ge_7"))),
                _pct(t.get("share_second_ge_threshold")),
                _pct(t.get("tie_share")),
                " ".join(str(h) for h in t.get("histogram", [])) or "—",
            ]
        )
    header = [
        "question",
        "queries",
        "incomplete",
        f">= {thr} votes for {first}",
        f">= {thr} votes for {second}",
    ]
    return [*header, "tie votes", "histogram (queries by votes for the first, 0..n)"], rows


def _fig3_comparison(name: str, result: dict, panel: str | None) -> dict[str, Any]:
    """One comparison of the Fig. 3 section: its title, the paper's panel, the tallies and the chart."""
    comp = result.get("comparison") if isinstance(result.get("comparison"), dict) else {}
    by_split = result.get("by_split")
    split_rows = None
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
        split_rows = (["split", "question", "queries", ">= 7 for first", ">= 7 for second"], rows)
    title = f"{name}: {comp.get('first_model', '?')} vs {comp.get('second_model', '?')}"
    return {
        "title": title,
        "info": ", ".join(f"{k} {comp[k]}" for k in ("queries", "raters_per_query") if k in comp),
        "paper": PAPER_FIG3[panel] if panel else None,
        "tally": _fig3_tally(result, comp),
        "by_split": split_rows,
        "chart": _chart(figures.fig3(result, f"{title} (paper Fig. 3)"), f"Fig. 3 histogram, {name}"),
    }


def _section_fig3(metrics: dict) -> Markup:
    sbs = metrics.get("side_by_side")
    if not isinstance(sbs, dict) or not sbs:
        return _not_measured(COMMANDS["side_by_side"])
    panel_of = {p["name"]: k for k, p in fig3_panels(sbs).items()}
    return _m().fig3(
        [
            _fig3_comparison(name, sbs[name] if isinstance(sbs[name], dict) else {}, panel_of.get(name))
            for name in sorted(sbs)
        ]
    )


def _section_rejection(metrics: dict) -> Markup:
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
    header = ["selection", "model", "rule", "prompts", "reward kept", "reward random", "reward all"]
    return table(header + ["kept − random", "file"], rows)


def _grid_prompts(texts: list, categories: dict[str, str]) -> list[str]:
    """Up to GRID_PER_CATEGORY prompts of each category, the first in the evaluation's order, by category."""
    chosen, per_cat = [], {}
    for t in texts:
        c = categories.get(t, "other")
        if per_cat.get(c, 0) < GRID_PER_CATEGORY:
            per_cat[c] = per_cat.get(c, 0) + 1
            chosen.append(t)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(chosen, key=lambda t: order.get(categories.get(t, "other"), len(order)))


def _section_grids(
    grids: dict | None, categories: dict[str, str], image_bytes: Callable[[str], bytes | None]
) -> Markup:
    if not isinstance(grids, dict) or not isinstance(grids.get("images"), dict) or not grids["images"]:
        return _not_measured(COMMANDS["grids"])
    # the Fig. 3 sets (4 images per prompt) where evaluate wrote them, not every judged image
    images = grids["sets"] if isinstance(grids.get("sets"), dict) and grids["sets"] else grids["images"]
    models = list(images)
    groups = grids.get("prompts") if isinstance(grids.get("prompts"), dict) else {}
    if not groups:  # no groups recorded: every prompt of the first model in one group
        groups = {"all": list(images[models[0]])}
    cache: dict[str, str | None] = {}

    def uri(sha: str) -> str | None:
        if sha not in cache:
            try:
                data = image_bytes(sha)
            except (OSError, ValueError):
                data = None
            cache[sha] = _data_uri(data) if data else None
        return cache[sha]

    m = _m()
    shown = []
    for g, texts in groups.items():
        if not isinstance(texts, list):
            continue
        rows = []
        for t in _grid_prompts(texts, categories):
            cells = [m.prompt_cell(t, categories.get(t, "other"))]
            for model in models:
                shas = images[model].get(t) if isinstance(images[model], dict) else None
                cells.append(m.thumbs([(s, uri(s)) for s in shas if isinstance(s, str)]) if shas else "—")
            rows.append(cells)
        shown.append((g.replace("_", " "), ["prompt", *models], rows))
    return m.grids(GRID_PER_CATEGORY, shown)


LOOP_COMMAND = "t2ialign loop RUN --rounds 3 --labels-per-round B (docs/loop.md)"
RL_COMMAND = "t2ialign rl RUN (docs/rl.md)"


def _loop_rows(rounds: list[dict], cats: list[str]) -> list[list[Any]]:
    rows = []
    for r in rounds:
        for g in ("seen", "all"):
            deltas = (
                ["base"] * len(cats)
                if r.get("round") == 0
                else [_delta_cell(_get(r, "evaluate", g, c)) for c in cats]
            )
            rows.append(
                [
                    _num(r.get("round"), "d"),
                    _num(r.get("labels_round"), "d"),
                    _num(r.get("labels_total"), "d"),
                    g,
                ]
                + deltas
                + [_num(r.get("fd_clip")), _num(r.get("mean_reward"), ".3f"), _num(r.get("wall_s"), ".0f")]
            )
    return rows


def _section_loop(metrics: dict) -> Markup:
    """The iterated loop (``t2ialign loop``): per loop, the curve of core.figures.loop_curve and a table."""
    loops = metrics.get("loop")
    if not isinstance(loops, dict) or not loops:
        return _not_measured(LOOP_COMMAND)
    cats = [*CATEGORIES, "all"]
    header = ["round", "labels", "labels so far", "group", *cats, "FD_CLIP", "mean reward", "seconds"]
    shown = []
    for name, sec in loops.items():
        rounds = [r for r in (_get(sec, "rounds") or []) if isinstance(r, dict)]
        cfg = _get(sec, "config") or {}
        summary = (
            f"{len(rounds) - 1 if rounds else 0} of {cfg.get('rounds', '—')} rounds finished; "
            f"{cfg.get('labels_per_round', '—')} labeled images per round ({cfg.get('labelers', '—')} labelers, "
            f"{cfg.get('n_labelers', '—')} each); D_model: {cfg.get('d_model', '—')}; "
            f"{_get(cfg, 'finetune', 'max_train_steps') or '—'} fine-tuning steps per round. "
            "Mean reward is under each round's own reward model."
        )
        chart = _chart(
            figures.loop_curve(rounds, title=f"loop {name}"), f"loop {name}: alignment and FD_CLIP per round"
        )
        shown.append(
            {"name": name, "summary": summary, "chart": chart, "table": (header, _loop_rows(rounds, cats))}
        )
    return macros(TEMPLATES, "loop.html").loop(shown)


def _section_rl(metrics: dict) -> Markup:
    """Online RL (``t2ialign rl``): per run, its summary, the guard's curves and its alerts."""
    runs = metrics.get("rl")
    if not isinstance(runs, dict) or not runs:
        return _not_measured(RL_COMMAND)
    shown = []
    for name, rep in runs.items():
        rep = rep if isinstance(rep, dict) else {}
        summary = [
            ["method", rep.get("method", "—")],
            ["reward", f"{rep.get('reward', '—')} ({rep.get('reward_model', '—')})"],
            ["KL weight", _num(rep.get("kl_weight"))],
            ["steps", f"{_num(rep.get('steps'), 'd')} of {_num(rep.get('max_train_steps'), 'd')}"],
            ["images sampled", _num(rep.get("images_sampled"), "d")],
            ["final training reward", _num(rep.get("final_reward"), ".4f")],
            ["labels used", _num(rep.get("labels_used"), "d")],
            ["wall s", _num(rep.get("wall_s"), ".0f")],
            ["stopped by the guard", "yes" if rep.get("stopped_by_guard") else "no"],
        ]
        guard = rep.get("guard") if isinstance(rep.get("guard"), dict) else {}
        chart = _chart(figures.rl_guard(guard, rep.get("reward_curve")), f"rl {name}: guard curves")
        alerts = [
            f"step {a.get('step', '?')}: {a.get('message', '')}" if isinstance(a, dict) else str(a)
            for a in rep.get("alerts") or []
        ]
        shown.append({"name": name, "summary": summary, "chart": chart, "alerts": alerts})
    return macros(TEMPLATES, "rl.html").rl(shown)


def _section_methods(metrics: dict, run_dir: Path) -> Markup:
    """Every evaluated method against base on the same evaluation (``report.methods``)."""
    rows = methods.comparison_rows(metrics, run_dir, _delta_cell, _num)
    if not rows:
        return _not_measured(COMMANDS["evaluate"])
    return macros(TEMPLATES, "methods.html").methods(methods.HEADER, rows)


def _section_claims(metrics: dict) -> Markup:
    found = claims(metrics)
    verdict = _m().verdict
    rows = [
        [c["section"], c["claim"], c["paper"], c["measured"], c["criterion"], verdict(c["verdict"])]
        for c in found
    ]
    counts = {v: sum(c["verdict"] == v for c in found) for v in VERDICTS}
    return _m().claims(", ".join(f"{n} {v}" for v, n in counts.items()), rows)


# --- page ----------------------------------------------------------------------------------------------------------


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
        ("loop", "Iterated loop: alignment and FD_CLIP per round", lambda: _section_loop(metrics)),
        ("rl", "Online RL: the reward and the guard against reward hacking", lambda: _section_rl(metrics)),
        ("methods", "Methods compared on the same evaluation", lambda: _section_methods(metrics, run_dir)),
        ("claims", "Paper vs this run", lambda: _section_claims(metrics)),
    ]
    shown = []
    for sid, title, make in sections:
        try:
            content = make()
        except Exception as e:  # a malformed section must not hide the others; say what failed
            content = _m().failed(f"{type(e).__name__}: {e}")
        shown.append({"id": sid, "title": title, "content": content})
    return render(
        TEMPLATES,
        "report.html",
        run_name=run_dir.name,
        sections=shown,
        metrics_json=json.dumps(metrics, indent=1, sort_keys=True),
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
