"""A round's labels: counted per image of the round, and, for people, waited for.

In the world, simulated labelers label a round's images at once (``label.simulate``). With people, the
round waits until the web app (``t2ialign label serve RUN --k K``) has K answers for every image of the
round, looking at the store every ``poll_seconds`` and saying how many answers are still wanted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from sqlalchemy import case, func, select

from t2ialign.store import ImageRow, LabelerRow, LabelRow, Store


class LabelWaitTimeout(RuntimeError):
    """People did not give a round's labels in time; the round's state is kept, a rerun waits again."""


def answers_per_image(store: Store, shas: Collection[str]) -> dict[str, tuple[int, int]]:
    """{sha256: (answers, good/bad answers)} of these images, by labelers not excluded; skips are answers
    (the app hands an image to K labelers, whatever they answer) but teach the reward nothing."""
    out: dict[str, tuple[int, int]] = {}
    wanted = list(dict.fromkeys(shas))
    with store.session() as s:
        for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            q = (
                select(
                    ImageRow.sha256,
                    func.count(LabelRow.id),
                    func.sum(case((LabelRow.value != "skip", 1), else_=0)),
                )
                .join(LabelRow, LabelRow.image_id == ImageRow.id)
                .join(LabelerRow, LabelRow.labeler_id == LabelerRow.id)
                .where(ImageRow.sha256.in_(wanted[i : i + 500]), LabelerRow.excluded.is_(False))
                .group_by(ImageRow.sha256)
            )
            out |= {sha: (int(n), int(votes or 0)) for sha, n, votes in s.execute(q)}
    return out


def label_counts(store: Store, shas: Collection[str]) -> dict[str, int]:
    """What a round's labeling spent: images with a good/bad label (the budget's unit), answers given."""
    have = answers_per_image(store, shas)
    return {
        "images": len(shas),
        "labeled_images": sum(1 for _, votes in have.values() if votes),
        "answers": sum(n for n, _ in have.values()),
    }


def wait_for_labels(
    store: Store,
    shas: Collection[str],
    k: int,
    poll_seconds: float,
    timeout_seconds: float,
    where: str,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once every image of ``shas`` has ``k`` answers; raise LabelWaitTimeout after
    ``timeout_seconds``. ``where`` names the round in the messages; ``say`` prints them (one each time the
    count moves), ``sleep`` and ``clock`` are time's (tests pass their own)."""
    start, last = clock(), None
    total = k * len(shas)
    while True:
        have = answers_per_image(store, shas)
        wanted = sum(max(k - have.get(s, (0, 0))[0], 0) for s in shas)
        short = sum(1 for s in shas if have.get(s, (0, 0))[0] < k)
        if not wanted:
            say(f"{where}: the quota is reached: {total} answers, {k} on each of {len(shas)} images")
            return
        waited = clock() - start
        if waited >= timeout_seconds:
            raise LabelWaitTimeout(
                f"{where}: gave up waiting for labels after {waited:.0f} s (loop.timeout_seconds): "
                f"{wanted} of {total} answers still wanted ({short} of {len(shas)} images need more than "
                f"they have); keep `t2ialign label serve {store.run_dir} --k {k}` open and rerun the same "
                "command to wait again"
            )
        if wanted != last:
            say(
                f"{where}: waiting for people: {wanted} of {total} answers still wanted ({short} of "
                f"{len(shas)} images short of {k}); labelers answer in the web app, "
                f"`t2ialign label serve {store.run_dir} --k {k}`; looking again every {poll_seconds:g} s"
            )
            last = wanted
        sleep(min(poll_seconds, max(timeout_seconds - waited, 0.0)))
