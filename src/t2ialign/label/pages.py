"""The labeling app's HTML pages: self-contained (inline CSS and JS, no CDN), rendered on the server.

Every text from the database goes through ``html.escape``; the scripts carry the response's CSP nonce, so
even markup that slipped through could not run a script. The labeling page reloads itself after each
screen, so the server is the only place that renders a prompt.
"""

from __future__ import annotations

import html
from string import Template
from typing import Any

from t2ialign.label.auth import Account

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { display: flex; gap: 1.5em; align-items: center; padding: .6em 1.2em; background: #2d3a4a; color: #fff; }
header .grow { flex: 1; }
header button { background: none; color: #fff; border: 1px solid #fff8; border-radius: 4px; cursor: pointer; }
main { max-width: 1100px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin: .2em 0 .8em; }
.images { display: flex; gap: 1.2em; flex-wrap: wrap; }
.card { background: #fff; border: 3px solid #ddd; border-radius: 8px; padding: .8em; margin: 0; }
.card.selected { border-color: #3a7bd5; }
.card img { width: 256px; height: 256px; image-rendering: pixelated; display: block; background: #eee; }
.card .buttons { display: flex; gap: .4em; margin-top: .6em; }
.card button { flex: 1; padding: .4em; cursor: pointer; }
.card[data-answer="good"] { border-color: #2e9d4f; }
.card[data-answer="bad"] { border-color: #c93c3c; }
.card[data-answer="skip"] { border-color: #999; }
.answer { font-weight: bold; min-height: 1.3em; margin-top: .4em; }
.help { color: #555; margin-top: 1.5em; }
#status { color: #b00; min-height: 1.3em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; background: #fff; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code { background: #fff; padding: .2em .4em; word-break: break-all; }
"""

_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
</head>
<body>
$header
<main>
$body
<p id="status" role="status"></p>
</main>
<script nonce="$nonce">
async function post(url, body) {
  const opts = {method: "POST", headers: {}};
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const detail = data && data.detail ? data.detail : r.status + " " + r.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}
function showError(e) { document.getElementById("status").textContent = String(e.message || e); }
const logout = document.getElementById("logout");
if (logout) logout.addEventListener("click", () => post("/api/logout").then(() => location.assign("/")));
$script
</script>
</body>
</html>
""")

_LOGIN_JS = """
document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = document.getElementById("token").value.trim();
  post("/api/login", {token: token}).then(() => location.reload(), showError);
});
"""

_LABEL_JS = """
const cards = Array.from(document.querySelectorAll(".card"));
let selected = 0;
let queue = Promise.resolve();  // answers are sent one after another, in the order they were given
let pending = 0;  // answers given but not yet acknowledged by the server
function select(i) {
  if (i < 0 || i >= cards.length) return;
  selected = i;
  cards.forEach((c, j) => c.classList.toggle("selected", j === i));
}
function answer(i, value) {
  const card = cards[i];
  if (!card || card.dataset.answer) return;
  card.dataset.answer = value;
  card.querySelector(".answer").textContent = value + " ...";
  const next = cards.findIndex((c) => !c.dataset.answer);
  if (next >= 0) select(next);
  pending += 1;
  queue = queue.then(() => post("/api/labels", {image_id: Number(card.dataset.imageId), value: value}))
    .then(() => { card.querySelector(".answer").textContent = value; },
          (e) => { delete card.dataset.answer; card.querySelector(".answer").textContent = ""; select(i); showError(e); })
    .then(() => {
      pending -= 1;
      // the next screen only once every answer of this one is stored
      if (pending === 0 && cards.every((c) => c.dataset.answer)) location.reload();
    });
}
function undo() {
  queue = queue.then(() => post("/api/undo")).then(() => location.reload(), showError);
}
cards.forEach((card, i) => {
  card.addEventListener("click", () => select(i));
  card.querySelectorAll("button").forEach((b) => b.addEventListener("click", (ev) => {
    ev.stopPropagation(); select(i); answer(i, b.dataset.value);
  }));
});
document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const values = {g: "good", b: "bad", s: "skip"};
  if (["1", "2", "3"].includes(ev.key)) select(Number(ev.key) - 1);
  else if (values[ev.key]) answer(selected, values[ev.key]);
  else if (ev.key === "u") undo();
  else return;
  ev.preventDefault();
});
select(0);
"""

_ADMIN_JS = """
document.getElementById("add").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = document.getElementById("name").value.trim();
  post("/api/admin/labelers", {name: name}).then((r) => {
    const out = document.getElementById("new-token");
    out.textContent = "";
    out.append("Token of " + r.name + " (shown once, give it to them): ");
    const code = document.createElement("code");
    code.textContent = r.token;
    out.append(code);
  }, showError);
});
"""

e = html.escape


def _page(title: str, header: str, body: str, script: str, nonce: str) -> str:
    return _PAGE.substitute(title=e(title), css=_CSS, header=header, body=body, script=script, nonce=nonce)


def _header(account: Account | None, extra: str = "") -> str:
    who = ""
    if account is not None:
        admin = ' · <a href="/admin" style="color:#fff">admin page</a>' if account.is_admin else ""
        who = f'<span>{e(account.name)}{admin}</span><button id="logout" type="button">sign out</button>'
    return f'<header><strong>t2ialign labeling</strong><span class="grow">{extra}</span>{who}</header>'


def login_page(nonce: str) -> str:
    body = """<h1>Sign in</h1>
<form id="login">
<p><label>Your token <input id="token" type="password" autocomplete="current-password" size="50"
required autofocus></label> <button type="submit">sign in</button></p>
</form>
<p class="help">Your token comes from the admin (<code>t2ialign label add-labeler RUN NAME</code>).</p>"""
    return _page("Sign in · t2ialign", _header(None), body, _LOGIN_JS, nonce)


def labeling_page(
    account: Account, screen: dict[str, Any], progress: dict[str, int], k: int, nonce: str
) -> str:
    """One screen: the prompt and up to three of its images, each with good / bad / skip."""
    line = (
        f"you: {progress['mine']} labels · run: {progress['labeled_k_times']} of {progress['images']} "
        f"images have {k} labels"
    )
    help_ = (
        '<p class="help">Keys: <b>1</b> <b>2</b> <b>3</b> pick an image · <b>g</b> good · <b>b</b> bad · '
        "<b>s</b> skip · <b>u</b> undo your last answer. Good means the image shows exactly what the "
        "prompt says.</p>"
    )
    if screen["prompt"] is None:
        body = f"<h1>Nothing left for you to label. Thank you!</h1>{help_}"
        return _page("Done · t2ialign", _header(account, e(line)), body, _LABEL_JS, nonce)
    cards = []
    for n, im in enumerate(screen["images"], start=1):
        buttons = "".join(
            f'<button type="button" data-value="{v}">{v} ({v[0]})</button>' for v in ("good", "bad", "skip")
        )
        cards.append(
            f'<figure class="card" data-image-id="{int(im["id"])}">'
            f'<img src="{e(im["url"])}" alt="image {n}" width="256" height="256">'
            f'<figcaption>image {n}<div class="buttons">{buttons}</div><div class="answer"></div></figcaption>'
            "</figure>"
        )
    body = (
        f'<h1 id="prompt">{e(screen["prompt"]["text"])}</h1><div class="images">{"".join(cards)}</div>{help_}'
    )
    return _page("Label · t2ialign", _header(account, e(line)), body, _LABEL_JS, nonce)


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return e(str(value))


def _table(rows: dict[str, dict[str, Any]], first: str) -> str:
    """A table of a dict of dicts: one row per outer key, one column per inner key."""
    columns: list[str] = []
    for inner in rows.values():
        columns += [c for c in inner if c not in columns]
    head = "".join(f"<th>{e(str(c))}</th>" for c in [first, *columns])
    body = "".join(
        f"<tr><td>{e(str(key))}</td>"
        + "".join(f"<td>{_format(inner.get(c, ''))}</td>" for c in columns)
        + "</tr>"
        for key, inner in rows.items()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


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
    per_labeler = {name: {"labels": n} for name, n in summary.get("per_labeler", {}).items()}
    body = f"""<h1>Admin</h1>
<h2>Progress</h2>
<p><b>{_format(done)}</b> of {_format(progress.get("images"))} images have the {k} labels wanted, from
distinct labelers; {_format(progress.get("labels"))} labels in all.</p>
{_table({m: {"images": n} for m, n in hist.items()}, "labels on an image")}
<h2>Labels per labeler</h2>{_table(per_labeler, "labeler")}
<h2>Raters</h2>
<p>Agreement with the majority of the others, accuracy on gold images (known answers), answers per minute
and skip rate; flagged raters deserve a
look, and <code>t2ialign label exclude RUN NAME</code> keeps their labels out of training.</p>
{_table(_raters(summary.get("raters", {})), "labeler")}
<h2>Agreement</h2>
<p>Fleiss' kappa: <b>{"n/a" if kappa is None else _format(kappa)}</b></p>
<h3>Majority vote per category (share of images)</h3>{_table(summary.get("majority_share", {}), "category")}
<h2>Class balance (paper Table 1, % of answers)</h2>{_table(summary.get("table1", {}), "category")}
<h2>Accounts</h2>
<form id="add"><label>New labeler <input id="name" required maxlength="64"></label>
<button type="submit">create</button></form>
<p id="new-token"></p>
<h2>Export</h2>
<p><a href="/api/admin/export.jsonl" download>all labels as JSON lines</a></p>"""
    return _page("Admin · t2ialign", _header(account), body, _ADMIN_JS, nonce)


# --- side-by-side evaluation (paper Fig. 3) -------------------------------------------------------------------

_COMPARE_CSS = """
.set { display: flex; gap: .8em; align-items: center; margin: .6em 0; flex-wrap: wrap; }
.set .name { font-size: 2em; font-weight: bold; width: 1.6em; text-align: center; }
.set img { width: 200px; height: 200px; image-rendering: pixelated; background: #eee; border-radius: 4px; }
.question { background: #fff; border: 3px solid #ddd; border-radius: 8px; padding: .6em .9em; margin: .8em 0; }
.question.selected { border-color: #3a7bd5; }
.question button { min-width: 6em; padding: .4em; margin-right: .4em; cursor: pointer; }
.question button.chosen { background: #3a7bd5; color: #fff; }
#submit { padding: .5em 1.5em; font-size: 1.05em; }
.bar { display: inline-block; height: .9em; background: #9dbbe0; vertical-align: middle; }
.bar.top { background: #2e6fb8; }
"""

_COMPARE_JS = """
const form = document.getElementById("vote");
if (form) {
  const questions = Array.from(document.querySelectorAll(".question"));
  const submitButton = document.getElementById("submit");
  const answers = {};
  let current = 0;
  let sending = false;
  function show() {
    questions.forEach((q, i) => {
      q.classList.toggle("selected", i === current);
      q.querySelectorAll("button").forEach((b) =>
        b.classList.toggle("chosen", b.dataset.value === answers[q.dataset.question]));
    });
    submitButton.disabled = sending || !(answers.alignment && answers.fidelity);
  }
  function answer(i, value) {
    answers[questions[i].dataset.question] = value;
    current = Math.min(i + 1, questions.length - 1);
    show();
  }
  function submit() {
    if (sending || !answers.alignment || !answers.fidelity) return;
    sending = true;
    show();
    const body = {query_id: Number(form.dataset.queryId), alignment: answers.alignment, fidelity: answers.fidelity};
    // a resend of the same vote is harmless: the server answers "unchanged"
    post("/api/compare/votes", body).then(() => location.reload(), (e) => { sending = false; show(); showError(e); });
  }
  questions.forEach((q, i) => {
    q.addEventListener("click", () => { current = i; show(); });
    q.querySelectorAll("button").forEach((b) => b.addEventListener("click", (ev) => {
      ev.stopPropagation(); answer(i, b.dataset.value);
    }));
  });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const values = {a: "A", b: "B", t: "tie"};
    if (values[ev.key]) answer(current, values[ev.key]);
    else if (ev.key === "1" || ev.key === "2") { current = Number(ev.key) - 1; show(); }
    else if (ev.key === "Enter") submit();
    else return;
    ev.preventDefault();
  });
  show();
}
"""

_QUESTION_TEXT = {
    "alignment": "Which set matches the prompt better?",
    "fidelity": "Which set has better image quality (sharp, clean, free of artifacts), whatever it shows?",
}


def compare_page(account: Account, query: dict[str, Any] | None, progress: dict[str, int], nonce: str) -> str:
    """One side-by-side query: the prompt, sets A and B, and the two questions with A / B / tie.

    ``query`` is ``sidebyside.next_query``'s: it names no model, and neither does this page.
    """
    line = (
        f"you: {progress['mine']} votes · run: {progress['complete']} of {progress['queries']} "
        "queries have all their votes"
    )
    help_ = (
        '<p class="help">Keys: <b>a</b> / <b>b</b> / <b>t</b> answer the highlighted question (A, B, tie) and '
        "move on · <b>1</b> <b>2</b> pick a question · <b>Enter</b> sends both answers. Say <i>tie</i> when "
        "the two sets are about as good. A vote is final once sent.</p>"
    )
    css = f"<style>{_COMPARE_CSS}</style>"
    if query is None:
        body = f"{css}<h1>Nothing left for you to compare. Thank you!</h1>{help_}"
        return _page("Done · t2ialign", _header(account, e(line)), body, _COMPARE_JS, nonce)
    rows = []
    for side in ("A", "B"):
        images = "".join(
            f'<img src="{e(url)}" alt="set {side}, image {n}" width="200" height="200">'
            for n, url in enumerate(query[side], start=1)
        )
        rows.append(f'<div class="set" data-side="{side}"><span class="name">{side}</span>{images}</div>')
    questions = []
    for n, question in enumerate(("alignment", "fidelity"), start=1):
        buttons = "".join(
            f'<button type="button" data-value="{v}">{label}</button>'
            for v, label in (("A", "A (a)"), ("B", "B (b)"), ("tie", "tie (t)"))
        )
        questions.append(
            f'<div class="question" data-question="{question}"><p><b>{n}. {question}</b>: '
            f"{e(_QUESTION_TEXT[question])}</p>{buttons}</div>"
        )
    body = (
        f'{css}<h1 id="prompt">{e(query["prompt"])}</h1>{"".join(rows)}'
        f'<form id="vote" data-query-id="{int(query["id"])}">{"".join(questions)}'
        '<button id="submit" type="submit" disabled>send (Enter)</button></form>'
        f"{help_}"
    )
    return _page("Compare · t2ialign", _header(account, e(line)), body, _COMPARE_JS, nonce)


def _histogram_table(t: dict[str, Any], first_model: str) -> str:
    if t["percent"] is None:
        return f"<p>No query has all its votes yet ({_format(t['incomplete'])} waiting).</p>"
    rows = "".join(
        f'<tr><td>{v}</td><td>{_format(h)}</td><td>{p:.1f}%</td><td style="text-align:left">'
        f'<span class="bar{" top" if v >= t["threshold"] else ""}" style="width:{2 * p:.0f}px"></span></td></tr>'
        for v, (h, p) in enumerate(zip(t["histogram"], t["percent"], strict=True))
    )
    return (
        f"<p><b>{100 * t['share_ge_threshold']:.1f}%</b> of {t['queries']} queries got at least "
        f"{t['threshold']} votes for {e(first_model)} (the other model: "
        f"{100 * t['share_second_ge_threshold']:.1f}%); ties: {100 * t['tie_share']:.1f}% of votes; "
        f"{_format(t['incomplete'])} queries still short of votes are left out.</p>"
        f"<table><tr><th>votes for {e(first_model)}</th><th>queries</th><th>%</th><th></th></tr>{rows}</table>"
    )


def compare_admin_page(account: Account, tallies: list[dict[str, Any]], nonce: str) -> str:
    """Every comparison's tally (``sidebyside.tally``): Fig. 3's histograms as tables with bars."""
    parts = [f"<style>{_COMPARE_CSS}</style><h1>Side-by-side evaluation (paper Fig. 3)</h1>"]
    if not tallies:
        parts.append(
            "<p>No comparison yet: <code>t2ialign label compare create RUN NAME ...</code> makes one.</p>"
        )
    for t in tallies:
        c = t["comparison"]
        parts.append(
            f"<h2>{e(c['first_model'])} vs {e(c['second_model'])} <small>({e(c['name'])}, "
            f"{_format(c['queries'])} queries, {_format(c['raters_per_query'])} raters each)</small></h2>"
        )
        for question in ("alignment", "fidelity"):
            parts.append(f"<h3>{question}</h3>{_histogram_table(t[question], c['first_model'])}")
    parts.append('<p><a href="/api/admin/compare">all tallies as JSON</a> · <a href="/admin">admin</a></p>')
    return _page("Side by side · t2ialign", _header(account), "".join(parts), "", nonce)
