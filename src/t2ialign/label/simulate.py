"""Simulated labelers: the world judge answers good / bad / skip for every image, as the paper's labelers
did (Sec. 3.1), with configurable flip noise and skip rate; labels go through ``service.submit_labels``,
the code path of people's labels, so the rest of the loop cannot tell them apart.

Each simulated labeler ``sim-i`` sees the judge's verdict of an image, flips good <-> bad with probability
``noise`` (a judge "skip" stays skip), then answers skip instead with probability ``skip``. The random
draws are seeded by (seed, labeler, image sha256): the same settings give the same labels whatever the
order or the batch, and a rerun changes nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection

from sqlalchemy import select
from tqdm.auto import tqdm

from t2ialign.label.oracle import judge_stored
from t2ialign.label.service import submit_labels
from t2ialign.label.stats import label_summary
from t2ialign.store import IMPORTED_SPLIT, ROLES, LabelerRow, LabelRow, Store
from t2ialign.world.judge import Judge

FLIP = {"good": "bad", "bad": "good", "skip": "skip"}
WRITE_CHUNK = 1000  # labels per transaction
JUDGE_CHUNK = 1024  # images read and judged per step (judge_stored batches within it)


def simulated_answer(verdict: str, noise: float, skip: float, seed: int, labeler: str, sha256: str) -> str:
    """One simulated labeler's answer to one image, given the judge's verdict (good / bad / skip).

    Two uniform draws from an rng seeded by (seed, labeler, sha256): the first flips good <-> bad when
    below ``noise``, the second turns the answer into skip when below ``skip``. Both are always drawn, so
    changing one rate never reshuffles the other's draws.
    """
    rng = random.Random(f"{seed}:{labeler}:{sha256}")  # str seeds hash with SHA-512: stable across runs
    flip_u, skip_u = rng.random(), rng.random()
    answer = FLIP[verdict] if flip_u < noise else verdict
    return "skip" if skip_u < skip else answer


def _check_settings(n_labelers, noise, skip, role) -> None:
    if not isinstance(n_labelers, int) or isinstance(n_labelers, bool) or n_labelers < 1:
        raise ValueError(f"n_labelers must be an integer >= 1, got {n_labelers!r}")
    for name, rate in (("noise", noise), ("skip", skip)):
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 0.5:
            raise ValueError(f"{name} must be a probability in [0, 0.5], got {rate!r}")
    if role not in ROLES:
        raise ValueError(f"unknown image role {role!r}; known: {', '.join(ROLES)}")


def simulated_labelers(store: Store, n: int) -> dict[str, int]:
    """The labelers ``sim-1`` .. ``sim-n`` (name -> id), created as simulated where missing.

    A labeler of one of these names that is not simulated (a person) is an error: never answer for one.
    """
    names = [f"sim-{i}" for i in range(1, n + 1)]
    with store.session() as s:
        found = {r.name: r for r in s.scalars(select(LabelerRow).where(LabelerRow.name.in_(names)))}
    people = [name for name, r in found.items() if not r.is_simulated]
    if people:
        raise ValueError(f"labeler(s) {', '.join(sorted(people))} exist and are not simulated")
    return {
        name: found[name].id if name in found else store.add_labeler(name, is_simulated=True)
        for name in names
    }


def _images_to_label(store: Store, role: str, shas: Collection[str] | None) -> list[dict]:
    """The stored images of ``role`` (of ``shas`` when given) that simulated labelers can label."""
    # imported images (role unlabeled, captions of a public set) have their set's answers; the judge
    # cannot read a free caption, and a simulated label on them would be feedback on no world prompt
    imported = {p["text"] for p in store.list_prompts(split=IMPORTED_SPLIT)}
    keep = None if shas is None else set(shas)
    images = [
        im
        for im in store.list_images(role=role)
        if im["prompt"] not in imported and (keep is None or im["sha256"] in keep)
    ]
    if not images:
        raise ValueError(f"no images of role {role!r} in {store.run_dir}: run `t2ialign generate` first")
    missing = [r["sha256"] for r in images if not store.image_path(r["sha256"]).is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} image file(s) of role {role!r} are missing from {store.images_dir}, "
            f"e.g. {missing[0]}: the judge needs the pixels"
        )
    return images


def _verdicts(store: Store, images: list[dict], judge: Judge, progress: bool) -> dict[int, str]:
    """The judge's verdict on each image (by image id), in chunks."""
    verdicts: dict[int, str] = {}
    chunks = range(0, len(images), JUDGE_CHUNK)
    for i in tqdm(chunks, desc="judge", unit="chunk", disable=not progress):
        for j in judge_stored(store, images[i : i + JUDGE_CHUNK], judge):
            verdicts[j["image_id"]] = j["verdict"]
    return verdicts


def _stored_labels(store: Store, labeler_ids: list[int]) -> dict[tuple[int, int], str]:
    """{(image id, labeler id): value} of the labels these labelers have already given."""
    with store.session() as s:
        rows = s.execute(
            select(LabelRow.image_id, LabelRow.labeler_id, LabelRow.value).where(
                LabelRow.labeler_id.in_(labeler_ids)
            )
        )
        return {(image_id, labeler_id): value for image_id, labeler_id, value in rows}


def simulate_labels(
    store: Store,
    n_labelers: int = 3,
    noise: float = 0.05,
    skip: float = 0.05,
    seed: int = 0,
    judge: Judge | None = None,
    role: str = "human",
    progress: bool = True,
    images: Collection[str] | None = None,
) -> dict:
    """Label every image of ``role`` (of ``images``, sha256s, when given: one round of ``t2ialign loop``) by
    ``n_labelers`` simulated labelers (paper Sec. 3.1, Table 1).

    Judges each image once against its prompt with the world judge (``Judge.load()`` by default), derives
    each labeler's answer with :func:`simulated_answer`, and writes them with ``service.submit_labels`` (the
    web app's path, a thousand labels per transaction), skipping labels already stored with the same
    value (so a rerun with the same settings changes nothing, ``updated_at`` included). Returns the settings, counts of the judge's
    verdicts and of written / replaced / unchanged labels, the write speed, and ``label_summary``.
    """
    _check_settings(n_labelers, noise, skip, role)
    images = _images_to_label(store, role, images)
    labelers = simulated_labelers(store, n_labelers)
    judge = judge if judge is not None else Judge.load()

    verdicts = _verdicts(store, images, judge, progress)
    stored = _stored_labels(store, list(labelers.values()))
    counts = {"new": 0, "replaced": 0, "unchanged": 0}
    start = time.perf_counter()
    bar = tqdm(total=len(images) * len(labelers), desc="label", unit="label", disable=not progress)
    for name, labeler_id in labelers.items():
        pending = []
        for r in images:
            value = simulated_answer(verdicts[r["id"]], noise, skip, seed, name, r["sha256"])
            old = stored.get((r["id"], labeler_id))
            if old == value:
                counts["unchanged"] += 1
            else:
                pending.append((labeler_id, r["id"], value))
                counts["new" if old is None else "replaced"] += 1
        for i in range(0, len(pending), WRITE_CHUNK):  # a crash loses at most the chunk being written
            submit_labels(store, pending[i : i + WRITE_CHUNK])
            bar.update(len(pending[i : i + WRITE_CHUNK]))
        bar.update(len(images) - len(pending))
    bar.close()
    seconds = time.perf_counter() - start
    written = counts["new"] + counts["replaced"]
    return {
        "settings": {"n_labelers": n_labelers, "noise": noise, "skip": skip, "seed": seed, "role": role},
        "images": len(images),
        "labelers": list(labelers),
        "judge_verdicts": {v: sum(x == v for x in verdicts.values()) for v in ("good", "bad", "skip")},
        "labels": counts,
        "write_seconds": round(seconds, 3),
        "labels_per_s": round(written / seconds, 1) if written and seconds > 0 else None,
        "summary": label_summary(store),
    }


# --- gold images: fresh world renders whose truth is known ----------------------------------------------------

GOLD_MODEL_ID = "gold:world-render"


def add_gold_images(store: Store, n: int, seed: int = 0, size: int = 64) -> dict[str, int]:
    """Render ``n`` gold images for the run's prompts, half right and half wrong, and record their truth.

    A right one is a render of the prompt itself (the world's renders are always right: answer good); a
    wrong one is a render of another prompt of a different shape, shown under this prompt (answer bad).
    They get role "eval" and model_id ``GOLD_MODEL_ID``, so they are never D_human: their labels measure
    raters (``stats.rater_quality``) and are never feedback. Returns counts of good and bad gold images.
    """
    import io

    from t2ialign.world.render import render

    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100_000:
        raise ValueError(f"n must be an integer in [1, 100000], got {n!r}")
    prompts = [p for p in store.list_prompts() if p["shape"]]
    if not prompts:
        raise ValueError("the run has no prompts: run `t2ialign prompts` first")
    rng = random.Random(f"gold:{seed}")
    records, answers = [], []
    for i in range(n):
        p = rng.choice(prompts)
        answer = "good" if i % 2 == 0 else "bad"
        shown = p["text"]
        if answer == "bad":
            others = [q for q in prompts if q["shape"] != p["shape"]]
            if not others:
                raise ValueError("the run's prompts have one shape only: no wrong render to make")
            shown = rng.choice(others)["text"]
        buf = io.BytesIO()
        render(shown, seed * 1_000_003 + i, size=size).pil().save(buf, format="PNG")
        sha = store.put_image_bytes(buf.getvalue())
        records.append(
            dict(sha256=sha, prompt_text=p["text"], model_id=GOLD_MODEL_ID, seed=seed * 1_000_003 + i)
            | dict(sampler={"rendered": shown}, role="eval", width=size, height=size)
        )
        answers.append(answer)
    known = {im["sha256"] for im in store.list_images(model_id=GOLD_MODEL_ID)}
    fresh = [(r, a) for r, a in zip(records, answers, strict=True) if r["sha256"] not in known]
    fresh = list({r["sha256"]: (r, a) for r, a in fresh}.values())
    ids = store.add_images([r for r, _ in fresh])
    store.set_gold({i: a for i, (_, a) in zip(ids, fresh, strict=True)})
    return {"good": sum(a == "good" for _, a in fresh), "bad": sum(a == "bad" for _, a in fresh)}
