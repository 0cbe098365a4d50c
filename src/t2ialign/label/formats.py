"""The field's public preference sets, read in their own schemas: Pick-a-Pic v2 (Parquet), ImageReward's
``test.json`` and HPDv2's ``test.json`` (see docs/formats.md for what each schema is and where it was
checked). Each parser yields neutral :class:`ImportedPreference` records, one per pair of images of one
prompt with a rater's answer A / B / tie; :func:`import_preferences` writes them into a run.

Rankings (ImageReward, HPDv2) become their n(n-1)/2 pairs, equal ranks a "tie". Parsers stream: Pick-a-Pic
is read by Parquet record batches, never as a whole table (its train split is ~320 GB); the JSON sets are
small (one JSON array, read at once) and read each image file only when its item is reached. Bad input
is a ValueError naming the file and the row (or item) and what is wrong with it.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from t2ialign.store import check_caption as _check_caption

FORMATS = ("pickapic", "imagereward", "hpdv2", "t2ialign")
CHOICES = ("A", "B", "tie")
# Pick-a-Pic columns the parser needs; the others (uids, urls, ranking_id, ...) are left unread.
PICKAPIC_REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
PICKAPIC_OPTIONAL = ("model_0", "model_1", "user_id", "has_label")
# (label_0, label_1) -> choice: image 0 is "A". A tie is 0.5 / 0.5 (PickScore's criterion: is_tie).
_PICKAPIC_LABELS = {(1.0, 0.0): "A", (0.0, 1.0): "B", (0.5, 0.5): "tie"}
# The JSON sets: (list of image paths, list of ranks) keys, and the smallest rank allowed.
# A labeler name as the store takes an imported rater's (store.preferences).
_RATER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_RANKED = {"imagereward": ("generations", "ranking", 1), "hpdv2": ("image_path", "rank", 0)}


@dataclass(frozen=True)
class ImportedPreference:
    """One rater's answer on two images of one prompt: ``choice`` "A" (image_a is better), "B" or "tie".

    ``image_a`` / ``image_b`` are the encoded image files as the set holds them (JPEG, WebP, PNG...);
    ``rater`` is the set's rater id (Pick-a-Pic's user_id) or None where the set gives one consensus
    ranking; ``source`` names the file and row, for messages.
    """

    prompt: str
    image_a: bytes
    image_b: bytes
    choice: str
    rater: str | None
    model_a: str | None
    model_b: str | None
    source: str


# --- detection ----------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """The format of a file by its name and schema: a Parquet file with Pick-a-Pic's columns is
    "pickapic", a JSON array of items with ``generations``/``ranking`` "imagereward", with
    ``image_path``/``rank`` "hpdv2"; anything else .jsonl / .parquet is t2ialign's own label export."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet" and path.is_file():
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError):
            return "t2ialign"  # its reader names the file as unreadable
        return "pickapic" if all(c in names for c in PICKAPIC_REQUIRED) else "t2ialign"
    if suffix == ".json":
        items = _json_items(path)
        keys = set(items[0]) if items and isinstance(items[0], dict) else set()
        for fmt, (images_key, ranks_key, _) in _RANKED.items():
            if {images_key, ranks_key} <= keys:
                return fmt
        raise ValueError(
            f"{path}: a JSON file must be ImageReward's test.json (items with prompt, generations, ranking) "
            "or HPDv2's (prompt, image_path, rank); pass --format to say which"
        )
    return "t2ialign"


def read_preferences(
    path: str | Path, fmt: str, image_root: str | Path | None = None, batch_size: int = 256
) -> Iterator[ImportedPreference]:
    """The records of a public set in format ``fmt`` ("pickapic", "imagereward" or "hpdv2")."""
    if fmt == "pickapic":
        return read_pickapic(path, batch_size=batch_size)
    if fmt in _RANKED:
        return read_ranked(path, fmt, image_root=image_root)
    raise ValueError(
        f"unknown preference format {fmt!r}; known: {', '.join(f for f in FORMATS if f != 't2ialign')}"
    )


# --- Pick-a-Pic v2 ------------------------------------------------------------------------------------------


def read_pickapic(path: str | Path, batch_size: int = 256) -> Iterator[ImportedPreference]:
    """Records of a Pick-a-Pic v2 Parquet file (one shard of ``yuvalkirstain/pickapic_v2``), read by record
    batches of ``batch_size`` rows. ``jpg_0`` is image A. Rows with ``has_label`` false (unlabeled pairs of
    the train split) are skipped, as PickScore's loader does; the rater is ``user_id``."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path} is not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    missing = [c for c in PICKAPIC_REQUIRED if c not in names]
    if missing:
        raise ValueError(f"{path}: not a Pick-a-Pic v2 file, missing column(s) {', '.join(missing)}")
    columns = [*PICKAPIC_REQUIRED, *(c for c in PICKAPIC_OPTIONAL if c in names)]
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        for r in batch.to_pylist():
            row += 1
            rec = _pickapic_record(r, f"{path} row {row}")
            if rec is not None:
                yield rec


def _pickapic_record(r: dict[str, Any], where: str) -> ImportedPreference | None:
    if r.get("has_label") is False:
        return None
    caption = r["caption"]
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: caption must be a non-empty string, got {caption!r}")
    for c in ("jpg_0", "jpg_1"):
        if not isinstance(r[c], bytes) or not r[c]:
            raise ValueError(f"{where}: {c} must hold the image's bytes, got {type(r[c]).__name__}")
    labels = (r["label_0"], r["label_1"])
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in labels):
        raise ValueError(f"{where}: label_0, label_1 must be numbers (1/0, 0/1 or 0.5/0.5), got {labels}")
    choice = _PICKAPIC_LABELS.get((float(labels[0]), float(labels[1])))
    if choice is None:
        raise ValueError(f"{where}: label_0, label_1 must be 1/0, 0/1 or 0.5/0.5 (a tie), got {labels}")
    user = r.get("user_id")
    return ImportedPreference(
        prompt=caption,
        image_a=r["jpg_0"],
        image_b=r["jpg_1"],
        choice=choice,
        rater=None if user is None else str(user),
        model_a=r.get("model_0"),
        model_b=r.get("model_1"),
        source=where,
    )


# --- rankings: ImageReward and HPDv2 ------------------------------------------------------------------------


def _json_items(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of items, got {type(data).__name__}")
    return data


def read_ranked(
    path: str | Path, fmt: str, image_root: str | Path | None = None
) -> Iterator[ImportedPreference]:
    """Records of ImageReward's or HPDv2's ``test.json`` (``fmt`` "imagereward" or "hpdv2"): each item's
    ranking of n images becomes its n(n-1)/2 pairs (i < j, image i is "A"); the lower rank is the better
    image, equal ranks a "tie". Image paths are relative to ``image_root`` (default: the file's folder;
    ImageReward's test.py reads them under ``data/test_images``, HPSv2's evaluation under ``--image-path``).
    The rater is None: both files give one ranking per item."""
    path = Path(path)
    root = path.parent if image_root is None else Path(image_root)
    images_key, ranks_key, lowest = _RANKED[fmt]
    for i, item in enumerate(_json_items(path)):
        where = f"{path} item {i + 1}" + (
            f" (id {item['id']})" if isinstance(item, dict) and "id" in item else ""
        )
        prompt, files, ranks = _ranked_item(item, where, images_key, ranks_key, lowest)
        data = [_read_image_file(root, f, where) for f in files]
        for a in range(len(files)):
            for b in range(a + 1, len(files)):
                choice = "A" if ranks[a] < ranks[b] else "B" if ranks[a] > ranks[b] else "tie"
                yield ImportedPreference(
                    prompt=prompt,
                    image_a=data[a],
                    image_b=data[b],
                    choice=choice,
                    rater=None,
                    model_a=None,
                    model_b=None,
                    source=f"{where} images {a + 1} and {b + 1}",
                )


def _ranked_item(item, where: str, images_key: str, ranks_key: str, lowest: int):
    if not isinstance(item, dict):
        raise ValueError(f"{where}: an item must be a JSON object, got {type(item).__name__}")
    missing = [k for k in ("prompt", images_key, ranks_key) if k not in item]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    prompt, files, ranks = item["prompt"], item[images_key], item[ranks_key]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(files, list) or len(files) < 2 or not all(isinstance(f, str) and f for f in files):
        raise ValueError(f"{where}: {images_key} must be a list of two or more image paths, got {files!r}")
    if not isinstance(ranks, list) or len(ranks) != len(files):
        raise ValueError(
            f"{where}: {ranks_key} must be a list of one rank per image ({len(files)}), got {ranks!r}"
        )
    for r in ranks:
        if not isinstance(r, int) or isinstance(r, bool) or r < lowest:
            raise ValueError(
                f"{where}: unknown rank {r!r} in {ranks_key} {ranks}: ranks are integers >= {lowest}"
            )
    return prompt, files, ranks


def _read_image_file(root: Path, name: str, where: str) -> bytes:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{where}: image path {name!r} must be relative, inside the image folder")
    try:
        return (root / p).read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"{where}: missing image file {root / p} (give the image folder with --image-root)"
        ) from None
    except OSError as e:
        raise ValueError(f"{where}: cannot read image file {root / p}: {e.strerror}") from e


# --- into the run -------------------------------------------------------------------------------------------


def to_png(data: bytes, where: str) -> tuple[bytes, int, int]:
    """The image as PNG bytes (RGB; the store keeps PNG only, content-addressed) and its size; ValueError
    naming ``where`` when the bytes are not an image PIL can decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{where}: not an image PIL can read: {e}") from e
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue(), rgb.width, rgb.height


def rater_name(fmt: str, rater: str | None) -> str:
    """The run's labeler name of an imported rater: the set's id at the set's name ("1234@pickapic"), or
    "consensus@<set>" for a set's one ranking. Should a labeler of the app bear that name, the store
    refuses the import (``Store.import_preferences``)."""
    name = f"{'consensus' if rater is None else rater}@{fmt}"
    if not _RATER.fullmatch(name):
        raise ValueError(f"rater id {rater!r} makes no labeler name (1 to 64 letters, digits or . _ @ -)")
    return name


def import_preferences(
    store, records: Iterable[ImportedPreference], fmt: str, batch: int = 2000
) -> dict[str, int]:
    """Write records of a public set into the run: images (decoded with PIL, stored as PNG by sha256,
    recorded with role "unlabeled" so labelers are not sent them), then pairs and answers under the
    source "import:<fmt>" (``Store.import_preferences``), ``batch`` records per transaction.

    A record's caption that is not a prompt of the run is stored as a free caption, split "imported"
    (``Store.add_free_prompts``: no category nor attributes, so the stages that build prompt sets, train
    or evaluate by the world's splits leave it out); one that is a prompt of the run keeps its row. Records of one image twice (Pick-a-Pic's ``are_different`` false) are skipped and counted. A bad
    record stops the import with a ValueError naming its file and row; the batches before it stay
    written, and rerunning the import after fixing the file changes nothing for them.
    """
    if fmt not in FORMATS or fmt == "t2ialign":
        raise ValueError(f"unknown preference format {fmt!r}")
    known = {p["text"] for p in store.list_prompts()}
    recorded = {im["sha256"]: im["prompt"] for im in store.list_images()}
    counts = {"records": 0, "same_image": 0, "prompts_new": 0, "images": 0, "pairs": 0, "raters_new": 0}
    counts |= {"new": 0, "replaced": 0, "unchanged": 0}
    chunk: list[ImportedPreference] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= batch:
            _import_chunk(store, chunk, fmt, known, recorded, counts)
            chunk = []
    if chunk:
        _import_chunk(store, chunk, fmt, known, recorded, counts)
    return counts


def _import_chunk(store, chunk, fmt: str, known: set, recorded: dict, counts: dict) -> None:
    rows: dict[tuple, tuple] = {}  # (rater, unordered pair) -> row: a rater's later answer replaces theirs
    new_images = []
    free: dict[str, str] = {}  # captions new to the run -> the record that brought them, for messages
    for rec in chunk:
        counts["records"] += 1
        if rec.prompt not in known and rec.prompt not in free:
            try:
                _check_caption(rec.prompt)
            except ValueError as e:
                raise ValueError(f"{rec.source}: {e}") from None
            free[rec.prompt] = rec.source
        shas = []
        for side, data, model in (("A", rec.image_a, rec.model_a), ("B", rec.image_b, rec.model_b)):
            png, w, h = to_png(data, f"{rec.source} image {side}")
            sha = store.put_image_bytes(png)
            if sha in recorded and recorded[sha] != rec.prompt:
                raise ValueError(
                    f"{rec.source}: image {side} ({sha}) is an image of prompt {recorded[sha]!r} in the run, "
                    f"not of {rec.prompt!r}"
                )
            if sha not in recorded:
                recorded[sha] = rec.prompt
                new_images.append(_image_record(sha, rec.prompt, fmt, model, w, h))
            shas.append(sha)
        if shas[0] == shas[1]:
            counts["same_image"] += 1
            continue
        try:
            rater = rater_name(fmt, rec.rater)
        except ValueError as e:
            raise ValueError(f"{rec.source}: {e}") from None
        rows[(rater, frozenset(shas))] = (rec.prompt, shas[0], shas[1], rater, rec.choice)
    if free:
        store.add_free_prompts(list(free))
        known.update(free)
        counts["prompts_new"] += len(free)
    if new_images:
        store.add_images(new_images)
        counts["images"] += len(new_images)
    if rows:
        got = store.import_preferences(list(rows.values()), source=f"import:{fmt}")
        for k in ("pairs", "raters_new", "new", "replaced", "unchanged"):
            counts[k] += got[k]


def _image_record(sha: str, prompt: str, fmt: str, model: str | None, w: int, h: int) -> dict[str, Any]:
    # The set does not say how an image was sampled: seed 0 and a sampler naming the set stand for it.
    return dict(sha256=sha, prompt_text=prompt, model_id=model or f"import:{fmt}", seed=0) | dict(
        sampler={"imported": fmt}, role="unlabeled", width=w, height=h
    )
