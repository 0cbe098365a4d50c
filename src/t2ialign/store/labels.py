"""Labelers, their good / bad / skip labels, and the assignment of images to label (leases)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from t2ialign.store import schema as db
from t2ialign.store._common import (
    _INT64,
    _as_utc,
    _check_int,
    _check_known,
    _check_one_of,
    _check_str,
    _check_utc,
    _chunks,
    _insert,
)
from t2ialign.store.leases import IMAGES, admit, assign, mine_state, read_taken, with_taken
from t2ialign.store.schema import GoldRow, ImageRow, LabelerRow, LabelRow, LeaseRow, PromptRow, SessionRow


class LabelsMixin:
    """The labeling part of :class:`~t2ialign.store.Store` (it needs ``self.session``)."""

    # --- labelers and labels ------------------------------------------------------------------------------

    def add_labeler(
        self, name: str, token_hash: str | None = None, is_admin: bool = False, is_simulated: bool = False
    ) -> int:
        """Create a labeler and return its id. ``token_hash`` is a hash, never the token itself."""
        _check_str("labeler name", name)
        _check_str("token_hash", token_hash, nullable=True)
        for flag, value in (("is_admin", is_admin), ("is_simulated", is_simulated)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be a bool, got {value!r}")
        with self.session() as s:
            if s.scalar(select(LabelerRow.id).where(LabelerRow.name == name)) is not None:
                raise ValueError(f"a labeler named {name!r} already exists")
            row = LabelerRow(name=name, token_hash=token_hash, is_admin=is_admin, is_simulated=is_simulated)
            s.add(row)
            s.flush()
            return row.id

    def set_label(self, image_id: int, labeler_id: int, value: str) -> None:
        """Set one labeler's label of one image (good / bad / skip); a second call replaces the first.

        One statement (INSERT ... ON CONFLICT DO UPDATE), so a resend or two concurrent requests cannot
        create a second label; committed when this returns.
        """
        self.set_labels([(image_id, labeler_id, value)])

    def set_labels(
        self, labels: list[tuple[int, int, str]], leased_at: datetime | None = None, k: int | None = None
    ) -> None:
        """:meth:`set_label` for many (image_id, labeler_id, value) in one transaction: all or nothing.

        Every label is validated (values, and that each image and labeler exists) before anything is
        written. One commit for the lot is what makes bulk labeling fast (a commit is an fsync). A resend
        of the same value changes nothing, not even ``updated_at`` (which orders undo).

        ``leased_at`` (the web app's path): a label that is not a change of the labeler's own earlier one
        needs a lease on the image to this labeler that is still active at ``leased_at``, and with ``k``
        the image must have fewer than k labels; else :class:`NotLeased`, and nothing is written. So a
        labeler can answer only what they were handed, a late answer after the lease expired is refused,
        and no image gets more than k labels. Labels of one image are serialized for this check (SQLite:
        the write lock; PostgreSQL: a row lock on the image).
        """
        if leased_at is not None:
            leased_at = _check_utc("leased_at", leased_at)
        _check_int("k", k, 1, 100_000, nullable=True)
        for image_id, labeler_id, value in labels:
            _check_one_of("label value", value, db.LABEL_VALUES)
            _check_int("image_id", image_id, 1, _INT64[1])
            _check_int("labeler_id", labeler_id, 1, _INT64[1])
        if len({(i, lab) for i, lab, _ in labels}) != len(labels):
            raise ValueError("the same (image, labeler) is given twice")
        if not labels:
            return
        with self.session() as s:
            _check_known(s, ImageRow, {i for i, _, _ in labels}, "image")
            _check_known(s, LabelerRow, {lab for _, lab, _ in labels}, "labeler")
            if leased_at is not None:
                _check_leased(s, labels, leased_at, k)
            now = db._utcnow()
            for chunk in _chunks(labels, 500):
                stmt = _insert(s)(LabelRow).values(
                    [
                        dict(image_id=i, labeler_id=lab, value=v, created_at=now, updated_at=now)
                        for i, lab, v in chunk
                    ]
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["image_id", "labeler_id"],
                    set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
                    # a resend of the same value is no change: updated_at (the undo order) stays
                    where=LabelRow.value != stmt.excluded.value,
                )
                s.execute(stmt)

    def delete_label(self, image_id: int, labeler_id: int) -> bool:
        """Remove one labeler's label of one image (undo); True if there was one."""
        _check_int("image_id", image_id, 1, _INT64[1])
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        with self.session() as s:
            result = s.execute(
                delete(LabelRow).where(LabelRow.image_id == image_id, LabelRow.labeler_id == labeler_id)
            )
            return result.rowcount > 0

    def set_admin(self, name: str, token_hash: str) -> int:
        """Create or update the admin labeler ``name`` with this token hash; return its id.

        Called at every start of the web app, so changing the admin secret takes effect on restart and the
        old secret stops working.
        """
        _check_str("labeler name", name)
        _check_str("token_hash", token_hash)
        with self.session() as s:
            row = s.scalar(select(LabelerRow).where(LabelerRow.name == name))
            if row is None:
                row = LabelerRow(name=name, token_hash=token_hash, is_admin=True, is_simulated=False)
                s.add(row)
                s.flush()
            else:
                row.token_hash, row.is_admin = token_hash, True
            return row.id

    def labeler_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        """The labeler (id, name, is_admin, token_hash) whose token hashes to ``token_hash``, or None."""
        _check_str("token_hash", token_hash)
        with self.session() as s:
            row = s.scalar(select(LabelerRow).where(LabelerRow.token_hash == token_hash).limit(1))
            if row is None:
                return None
            return {"id": row.id, "name": row.name, "is_admin": row.is_admin, "token_hash": row.token_hash}

    # --- sessions, revocation, rotation ----------------------------------------------------------------

    def add_session(self, labeler_id: int, id_hash: str, expires_at: datetime) -> None:
        """Record a sign-in: the sha256 of a fresh random session id (never the id itself) of a labeler."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        _check_str("id_hash", id_hash)
        expires_at = _check_utc("expires_at", expires_at)
        with self.session() as s:
            if s.get(LabelerRow, labeler_id) is None:
                raise ValueError(f"unknown labeler id {labeler_id}")
            s.add(SessionRow(id_hash=id_hash, labeler_id=labeler_id, expires_at=expires_at))

    def labeler_by_session(self, id_hash: str, now: datetime) -> dict[str, Any] | None:
        """The labeler (id, name, is_admin) of the session whose id hashes to ``id_hash``, if it is still
        active at ``now`` and the labeler has a token (a revoked one has none); else None."""
        _check_str("id_hash", id_hash)
        now = _check_utc("now", now)
        q = (
            select(LabelerRow)
            .join(SessionRow, SessionRow.labeler_id == LabelerRow.id)
            .where(
                SessionRow.id_hash == id_hash, SessionRow.expires_at > now, LabelerRow.token_hash.is_not(None)
            )
            .limit(1)
        )
        with self.session() as s:
            row = s.scalar(q)
            return None if row is None else {"id": row.id, "name": row.name, "is_admin": row.is_admin}

    def delete_session(self, id_hash: str) -> bool:
        """End one session (sign out); True if there was one."""
        _check_str("id_hash", id_hash)
        with self.session() as s:
            return s.execute(delete(SessionRow).where(SessionRow.id_hash == id_hash)).rowcount > 0

    def set_labeler_token(self, name: str, token_hash: str | None) -> int:
        """Give labeler ``name`` a new token hash (rotate) or none (revoke: no token signs in as them),
        end all their sessions and drop their leases, in one transaction; their labels stay. Their id.

        Refuses the admin (its token is the server's admin secret) and unknown names."""
        _check_str("labeler name", name)
        _check_str("token_hash", token_hash, nullable=True)
        with self.session() as s:
            row = s.scalar(select(LabelerRow).where(LabelerRow.name == name))
            if row is None:
                raise ValueError(f"no labeler named {name!r} in this run")
            if row.is_admin:
                raise ValueError(
                    f"{name!r} is the admin: change the admin secret and restart the server instead"
                )
            row.token_hash = token_hash
            s.execute(delete(SessionRow).where(SessionRow.labeler_id == row.id))
            s.execute(delete(LeaseRow).where(LeaseRow.labeler_id == row.id))
            return row.id

    def set_gold(self, answers: dict[int, str]) -> None:
        """Make images gold: {image_id: known answer, good or bad}. Each image must have role "eval" (never
        D_human, so its labels are never feedback) and no answer yet; one transaction."""
        for image_id, answer in answers.items():
            _check_int("image_id", image_id, 1, _INT64[1])
            _check_one_of("gold answer", answer, ("good", "bad"))
        with self.session() as s:
            ids = sorted(answers)
            for chunk in _chunks(ids, 500):
                roles = dict(
                    s.execute(select(ImageRow.id, ImageRow.role).where(ImageRow.id.in_(chunk))).all()
                )
                for i in chunk:
                    if i not in roles:
                        raise ValueError(f"unknown image id {i}")
                    if roles[i] != "eval":
                        raise ValueError(f"image {i} has role {roles[i]!r}: gold images have role 'eval'")
                taken = s.scalars(select(GoldRow.image_id).where(GoldRow.image_id.in_(chunk))).first()
                if taken is not None:
                    raise ValueError(f"image {taken} is gold already")
            s.add_all(GoldRow(image_id=i, answer=answers[i]) for i in ids)

    def gold_answers(self, image_ids: list[int] | None = None) -> dict[int, str]:
        """{image_id: known answer} of the gold images (of those ids, if given)."""
        q = select(GoldRow.image_id, GoldRow.answer)
        if image_ids is not None:
            for i in image_ids:
                _check_int("image_id", i, 1, _INT64[1])
            q = q.where(GoldRow.image_id.in_(image_ids))
        with self.session() as s:
            return dict(s.execute(q).all())

    def set_excluded(self, name: str, excluded: bool) -> int:
        """Exclude labeler ``name`` from the training labels (or include them again); their rows stay, and
        they can still sign in. Returns their id; ValueError for an unknown name."""
        _check_str("labeler name", name)
        if not isinstance(excluded, bool):
            raise ValueError(f"excluded must be a bool, got {excluded!r}")
        with self.session() as s:
            row = s.scalar(select(LabelerRow).where(LabelerRow.name == name))
            if row is None:
                raise ValueError(f"no labeler named {name!r} in this run")
            row.excluded = excluded
            return row.id

    def excluded_labeler_ids(self) -> set[int]:
        """Ids of the labelers excluded from the training labels (see :meth:`set_excluded`)."""
        with self.session() as s:
            return set(s.scalars(select(LabelerRow.id).where(LabelerRow.excluded.is_(True))))

    def images_by_id(self, image_ids: list[int]) -> list[dict[str, Any]]:
        """The images with these ids (id, sha256, role, model_id, seed, prompt_id, prompt, category), in the
        order given; unknown ids are left out."""
        for i in image_ids:
            _check_int("image_id", i, 1, _INT64[1])
        q = (
            select(ImageRow, PromptRow)
            .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
            .where(ImageRow.id.in_(image_ids))
        )
        with self.session() as s:
            found = {
                image.id: {
                    "id": image.id,
                    "sha256": image.sha256,
                    "role": image.role,
                    "model_id": image.model_id,
                    "seed": image.seed,
                    "prompt_id": prompt.id,
                    "prompt": prompt.text,
                    "category": prompt.category,
                }
                for image, prompt in s.execute(q)
            }
        return [found[i] for i in image_ids if i in found]

    def labels_of(self, labeler_id: int) -> list[dict[str, Any]]:
        """One labeler's labels (image_id, sha256, value, created_at, updated_at), newest answer first."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        q = (
            select(LabelRow, ImageRow.sha256)
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .where(LabelRow.labeler_id == labeler_id)
            .order_by(LabelRow.updated_at.desc(), LabelRow.id.desc())
        )
        with self.session() as s:
            return [
                {
                    "image_id": label.image_id,
                    "sha256": sha,
                    "value": label.value,
                    "created_at": _as_utc(label.created_at),
                    "updated_at": _as_utc(label.updated_at),
                }
                for label, sha in s.execute(q)
            ]

    def last_label(self, labeler_id: int) -> dict[str, Any] | None:
        """The labeler's most recent answer (image_id, value), or None if it has no labels."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        q = (
            select(LabelRow.image_id, LabelRow.value)
            .where(LabelRow.labeler_id == labeler_id)
            .order_by(LabelRow.updated_at.desc(), LabelRow.id.desc())
            .limit(1)
        )
        with self.session() as s:
            row = s.execute(q).first()
        return None if row is None else {"image_id": row.image_id, "value": row.value}

    def label_records(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` labels with id > ``after_id``, in id order, joined with their image, prompt and
        labeler: a page of an export. Short pages keep each read transaction (and SQLite's lock) short."""
        _check_int("after_id", after_id, 0, _INT64[1])
        _check_int("limit", limit, 1, 100_000)
        q = (
            select(LabelRow, ImageRow, PromptRow, LabelerRow.name)
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
            .join(LabelerRow, LabelRow.labeler_id == LabelerRow.id)
            .where(LabelRow.id > after_id, LabelRow.image_id.not_in(select(GoldRow.image_id)))  # not feedback
            .order_by(LabelRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return [
                {
                    "id": label.id,
                    "image_sha256": image.sha256,
                    "prompt": prompt.text,
                    "category": prompt.category,
                    "labeler": name,
                    "label": label.value,
                    "model_id": image.model_id,
                    "seed": image.seed,
                    "created_at": _as_utc(label.created_at),
                    "updated_at": _as_utc(label.updated_at),
                }
                for label, image, prompt, name in s.execute(q)
            ]

    # --- assignment (leases) ------------------------------------------------------------------------------

    def assign_images(
        self,
        labeler_id: int,
        now: datetime,
        expires_at: datetime,
        choose: Callable[[list[db.ImageState]], list[int]],
        gold: bool = False,
    ) -> list[int]:
        """Hand images to a labeler (with ``gold``: gold images, see ``GoldRow``): in one transaction, drop
        expired leases, read the state of every image to label (role human) as seen by this labeler, let
        ``choose`` pick image ids from those states, and lease the picked ones to the labeler until
        ``expires_at``. Returns the picked ids.

        Assignments are serialized (SQLite: the transaction's write lock; PostgreSQL: an advisory lock), so
        two labelers asking at once cannot both take an image's last free place. ``choose`` is the policy
        (``t2ialign.label.assignment``); it must be quick, it runs inside the transaction. The rule is the
        comparisons' too (``store.leases``).
        """
        with self.session() as s:
            states = partial(_image_states, gold=gold)
            return assign(s, IMAGES, labeler_id, now, expires_at, choose, states)

    def labeling_progress(self, labeler_id: int, k: int) -> dict[str, int]:
        """Counts for a labeler's progress line: images to label (role human), those with >= k labels, all
        labels on them, and this labeler's labels."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        _check_int("k", k, 1, 1000)
        per_image = (
            select(LabelRow.image_id, func.count().label("n"))
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .where(ImageRow.role == "human")
            .group_by(LabelRow.image_id)
            .subquery()
        )
        with self.session() as s:
            images = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.role == "human"))
            done = s.scalar(select(func.count()).select_from(per_image).where(per_image.c.n >= k))
            labels = s.scalar(select(func.coalesce(func.sum(per_image.c.n), 0)))
            mine = s.scalar(
                select(func.count())
                .select_from(LabelRow)
                .join(ImageRow, LabelRow.image_id == ImageRow.id)
                .where(LabelRow.labeler_id == labeler_id, ImageRow.role == "human")
            )
        return {"images": images, "labeled_k_times": done, "labels": int(labels), "mine": mine}

    def answer_count(self, labeler_id: int) -> int:
        """How many labels the labeler has, on any image (gold ones too): what paces the gold screens."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        with self.session() as s:
            return s.scalar(
                select(func.count()).select_from(LabelRow).where(LabelRow.labeler_id == labeler_id)
            )


def _check_leased(s: Session, labels: list[tuple[int, int, str]], now: datetime, k: int | None) -> None:
    """NotLeased unless every label is a change of the labeler's own or answers an active lease of theirs
    on an image with fewer than ``k`` labels (counting the new ones of this batch); see ``set_labels``."""
    image_ids = sorted({i for i, _, _ in labels})
    if s.get_bind().dialect.name == "postgresql":  # one lock order: no deadlock between two writers
        s.execute(
            select(ImageRow.id).where(ImageRow.id.in_(image_ids)).order_by(ImageRow.id).with_for_update()
        )
    taken = read_taken(s, IMAGES, image_ids, now)
    gold = set(s.scalars(select(GoldRow.image_id).where(GoldRow.image_id.in_(image_ids))))
    for i, lab, value in labels:  # every rater may answer a gold image: no k
        admit(IMAGES, taken, i, lab, (value,), None if i in gold else k, leased=True)


def _image_states(s: Session, labeler_id: int, gold: bool = False) -> list[db.ImageState]:
    """The :class:`ImageState` of every image with role human (with ``gold``: every gold image), for this
    labeler (expired leases already removed), in image id order; one statement (``leases.with_taken``)."""
    q = (
        select(ImageRow.id, ImageRow.prompt_id)
        .where(ImageRow.id.in_(select(GoldRow.image_id)) if gold else ImageRow.role == "human")
        .order_by(ImageRow.id)
    )
    return [
        db.ImageState(i, p, int(n_labels), int(n_leased), mine_state(labeled, leased, "labeled"))
        for i, p, n_labels, n_leased, labeled, leased in s.execute(
            with_taken(q, IMAGES, labeler_id, ImageRow.id)
        )
    ]
