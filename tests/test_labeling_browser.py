"""The labeling page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright signs
in, labels three images with the keyboard and undoes one; the database holds exactly those labels.

On CI (CI=true) a missing Chromium is a failure, not a skip: ``.ci/run`` installs it.
"""

import io
import time

import httpx
import sqlalchemy as sa

from labeling_server import server
from t2ialign.store import LabelerRow, LabelRow, Store
from t2ialign.world.prompts import Prompt, PromptSpec
from t2ialign.world.render import render

ADMIN_SECRET = "admin-secret-for-browser-tests-0123456789"
# HTML in a prompt must be shown as text: an injected element would set window.__xss.
HTML_PROMPT = '<img src=x onerror="window.__xss=1">Two circles & <b>friends</b>'


def make_run(run_dir) -> None:
    specs = [
        PromptSpec("circle", count=2),
        PromptSpec("square", color="red"),
    ]  # the second: "A red colored square"
    prompts = [
        Prompt(HTML_PROMPT, "count", "seen", specs[0]),
        Prompt(specs[1].text(), "color", "seen", specs[1]),
    ]
    with Store.open(run_dir) as store:
        store.add_prompts(prompts)
        records = []
        for p in prompts:
            for seed in range(3):
                buf = io.BytesIO()
                render(p.spec, seed).pil().save(buf, format="PNG")
                sha = store.put_image_bytes(buf.getvalue())
                records.append(
                    dict(
                        sha256=sha, prompt_text=p.text, model_id="world", seed=seed, sampler={}, role="human"
                    )
                    | dict(width=64, height=64)
                )
        store.add_images(records)


def stored_labels(run_dir, name: str) -> dict[int, str]:
    with Store.open(run_dir) as store, store.session() as s:
        rows = s.execute(
            sa.select(LabelRow.image_id, LabelRow.value)
            .join(LabelerRow, LabelRow.labeler_id == LabelerRow.id)
            .where(LabelerRow.name == name)
        ).all()
    return dict(rows)


def wait_for(predicate, what: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_label_three_images_with_the_keyboard(tmp_path, chromium):
    run_dir = tmp_path / "run"
    make_run(run_dir)
    with server(run_dir, tmp_path / "server.log", ADMIN_SECRET) as (url, _):
        r = httpx.post(
            f"{url}/api/admin/labelers",
            json={"name": "ann"},
            headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
            timeout=30,
        )
        token = r.json()["token"]
        # Playwright's string predicates below are functions, not strings to eval: the page's CSP forbids eval
        page = chromium.new_page()
        page.set_default_timeout(30_000)
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(url)
        page.fill("#token", token)
        page.press("#token", "Enter")
        page.wait_for_selector("#prompt")

        # the prompt is shown as text, and injected nothing
        assert page.text_content("#prompt") == HTML_PROMPT
        assert page.locator("#prompt *").count() == 0
        assert page.evaluate("window.__xss") is None
        # the three images of the prompt, loaded through the session cookie
        page.wait_for_function(
            "() => Array.from(document.images).every((im) => im.complete && im.naturalWidth > 0)"
        )
        ids = [int(x) for x in page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.imageId)")]
        assert len(ids) == 3

        for key in ("3", "s", "1", "g", "2", "b"):  # pick an image, answer it
            page.keyboard.press(key)
        expected = {ids[0]: "good", ids[1]: "bad", ids[2]: "skip"}
        wait_for(lambda: stored_labels(run_dir, "ann") == expected, "the three labels")
        # all three answered: the page moves on to the other prompt
        second = PromptSpec("square", color="red").text()
        page.wait_for_function("(t) => document.getElementById('prompt').textContent === t", arg=second)

        page.keyboard.press("u")  # undo the last answer: image 2's "bad"
        wait_for(lambda: stored_labels(run_dir, "ann") == {ids[0]: "good", ids[2]: "skip"}, "the undo")
        page.wait_for_function(
            "(id) => document.querySelector('.card') && document.querySelector('.card').dataset.imageId === id",
            arg=str(ids[1]),
        )
        assert page.locator(".card").count() == 1
        assert errors == []
