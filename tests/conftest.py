"""Shared fixtures: tiny real-architecture models built from config once per session."""

import io
import os
import shutil

import pytest

from t2ialign.label.service import submit_label
from t2ialign.models.tiny import build_tiny_clip, build_tiny_pipeline
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set, perturb
from t2ialign.world.render import render


@pytest.fixture(scope="session")
def tiny_pipeline_path(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


def _png(text, seed):
    buf = io.BytesIO()
    render(text, seed).pil().save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def labeled_run(tmp_path):
    """8 seen prompts x 6 images: even seeds show the prompt (labeled good by 2 labelers), odd seeds a
    perturbation of it (labeled bad)."""
    with Store.open(tmp_path / "run") as store:
        prompts = build_prompt_set()
        store.add_prompts(prompts)
        chosen = [p.text for p in prompts if p.split == "seen"][::300][:8]
        records, truth = [], {}
        for text in chosen:
            wrong = perturb(text, 2, seed=0)[0]
            for seed in range(6):
                sha = store.put_image_bytes(_png(text if seed % 2 == 0 else wrong, seed))
                truth[sha] = "good" if seed % 2 == 0 else "bad"
                records.append(
                    dict(
                        sha256=sha,
                        prompt_text=text,
                        model_id="test",
                        seed=seed,
                        sampler={},
                        role="human",
                        width=64,
                        height=64,
                    )
                )
        ids = store.add_images(records)
        a, b = store.add_labeler("ann"), store.add_labeler("bob")
        for image_id, r in zip(ids, records, strict=True):
            submit_label(store, a, image_id, truth[r["sha256"]])
            submit_label(store, b, image_id, truth[r["sha256"]] if image_id % 5 else "skip")
        yield store


# Headless Chromium (Debian package; .ci/run installs it) for the browser tests.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK) and shutil.which("chromium")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()
