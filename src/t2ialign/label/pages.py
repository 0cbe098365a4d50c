"""The labeling app's HTML pages: self-contained (inline CSS and JS, no CDN), rendered on the server from
the Jinja2 templates in ``label/templates`` (``core.html``'s environment, autoescaping on).

Every text from the database is escaped by the templates; the scripts carry the response's CSP nonce, so
even markup that slipped through could not run a script. The labeling page reloads itself after each
screen, so the server is the only place that renders a prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2ialign.core.html import macros, render
from t2ialign.label.auth import Account

TEMPLATES = Path(__file__).parent / "templates"

_QUESTION_TEXT = {
    "alignment": "Which set matches the prompt better?",
    "fidelity": "Which set has better image quality (sharp, clean, free of artifacts), whatever it shows?",
}


def _page(name: str, title: str, account: Account | None, nonce: str, line: str = "", **context: Any) -> str:
    return render(TEMPLATES, name, title=title, account=account, nonce=nonce, line=line, **context)


def login_page(nonce: str) -> str:
    return _page("login.html", "Sign in · t2ialign", None, nonce)


def labeling_page(
    account: Account, screen: dict[str, Any], progress: dict[str, int], k: int, nonce: str
) -> str:
    """One screen: the prompt and up to three of its images, each with good / bad / skip."""
    line = (
        f"you: {progress['mine']} labels · run: {progress['labeled_k_times']} of {progress['images']} "
        f"images have {k} labels"
    )
    if screen["prompt"] is None:
        return _page("label.html", "Done · t2ialign", account, nonce, line, prompt=None, images=[])
    images = [{"id": int(im["id"]), "url": im["url"]} for im in screen["images"]]
    prompt = screen["prompt"]["text"]
    return _page("label.html", "Label · t2ialign", account, nonce, line, prompt=prompt, images=images)


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _table(rows: dict[str, dict[str, Any]], first: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a dict of dicts: one row per outer key, one column per inner key."""
    columns: list[str] = []
    for inner in rows.values():
        columns += [c for c in inner if c not in columns]
    body = [[str(key)] + [_format(inner.get(c, "")) for c in columns] for key, inner in rows.items()]
    return [first, *map(str, columns)], body


def _raters(raters: dict[str, dict]) -> dict[str, dict]:
    """The rater-quality rows as the admin table shows them (flags as one text, n/a for missing)."""
    return {
        name: {
            "labels": r["labels"],
            "agreement": "n/a" if r["agreement"] is None else f"{r['agreement']:.0%} of {r['compared']}",
            "gold accuracy": "n/a"
            if r["gold_accuracy"] is None
            else f"{r['gold_accuracy']:.0%} of {r['gold']}",
            "per minute": "n/a" if r["per_minute"] is None else r["per_minute"],
            "skip rate": "n/a" if r["skip_rate"] is None else f"{r['skip_rate']:.0%}",
            "excluded": "yes" if r["excluded"] else "",
            "flags": ", ".join(r["flags"]),
        }
        for name, r in raters.items()
    }


def admin_page(account: Account, summary: dict[str, Any], k: int, nonce: str) -> str:
    """Progress, per-labeler counts, agreement and the class balance (paper Table 1); accounts; export."""
    progress = summary.get("progress", {})
    # labeled_k_times: {"m": number of images with m labels}
    hist = {str(m): n for m, n in progress.get("labeled_k_times", {}).items()}
    done = sum(n for m, n in hist.items() if m.isdigit() and int(m) >= k)
    kappa = summary.get("fleiss_kappa")
    tables = {
        "histogram": _table({m: {"images": n} for m, n in hist.items()}, "labels on an image"),
        "per_labeler": _table(
            {n: {"labels": c} for n, c in summary.get("per_labeler", {}).items()}, "labeler"
        ),
        "raters": _table(_raters(summary.get("raters", {})), "labeler"),
        "majority": _table(summary.get("majority_share", {}), "category"),
        "table1": _table(summary.get("table1", {}), "category"),
    }
    return _page(
        "admin.html",
        "Admin · t2ialign",
        account,
        nonce,
        done=_format(done),
        images=_format(progress.get("images")),
        labels=_format(progress.get("labels")),
        k=k,
        kappa="n/a" if kappa is None else _format(kappa),
        tables=tables,
    )


# --- side-by-side evaluation (paper Fig. 3) -------------------------------------------------------------------


def compare_page(account: Account, query: dict[str, Any] | None, progress: dict[str, int], nonce: str) -> str:
    """One side-by-side query: the prompt, sets A and B, and the two questions with A / B / tie.

    ``query`` is ``sidebyside.next_query``'s: it names no model, and neither does this page.
    """
    line = (
        f"you: {progress['mine']} votes · run: {progress['complete']} of {progress['queries']} "
        "queries have all their votes"
    )
    title = "Done · t2ialign" if query is None else "Compare · t2ialign"
    if query is not None:
        query = {**query, "id": int(query["id"])}
    questions = list(_QUESTION_TEXT.items())
    return _page("compare.html", title, account, nonce, line, query=query, questions=questions)


def _histogram(t: dict[str, Any], first_model: str) -> dict[str, Any]:
    """One question of a tally as the admin page shows it: the numbers and a table with bars."""
    question = {"incomplete": _format(t["incomplete"]), "table": None}
    if t["percent"] is None:
        return question
    bar = macros(TEMPLATES, "bar.html").bar
    rows = [
        [str(v), _format(h), f"{p:.1f}%", bar(p, v >= t["threshold"])]
        for v, (h, p) in enumerate(zip(t["histogram"], t["percent"], strict=True))
    ]
    return question | {
        "table": ([f"votes for {first_model}", "queries", "%", ""], rows),
        "share": f"{100 * t['share_ge_threshold']:.1f}",
        "share_second": f"{100 * t['share_second_ge_threshold']:.1f}",
        "ties": f"{100 * t['tie_share']:.1f}",
        "queries": t["queries"],
        "threshold": t["threshold"],
    }


def compare_admin_page(account: Account, tallies: list[dict[str, Any]], nonce: str) -> str:
    """Every comparison's tally (``sidebyside.tally``): Fig. 3's histograms as tables with bars."""
    shown = []
    for t in tallies:
        c = t["comparison"]
        questions = [{"question": q, **_histogram(t[q], c["first_model"])} for q in ("alignment", "fidelity")]
        shown.append(
            {
                "first_model": c["first_model"],
                "second_model": c["second_model"],
                "name": c["name"],
                "queries": _format(c["queries"]),
                "raters_per_query": _format(c["raters_per_query"]),
                "questions": questions,
            }
        )
    return _page("compare_admin.html", "Side by side · t2ialign", account, nonce, tallies=shown)
