"""Export and import of a run's labels as JSONL or Parquet: one row per label, with everything needed to
rebuild it in another run (the image's sha256, prompt, generator model, seed and sampler; the labeler).

The exported file is a data set of the paper's kind (Sec. 3.1: binary feedback on images of the four
categories of Table 1); ``datasets.load_dataset("parquet", data_files=...)`` reads the Parquet export.
Two exports of the same labels are byte-identical: rows are sorted by (image sha256, labeler name), times
are the labels' own, and Parquet is written with fixed settings and no pandas metadata.

With ``images=True`` the Parquet export carries the pictures too: a column ``image`` of datasets' ``Image``
feature (struct {bytes, path}, declared in the ``huggingface`` schema metadata as datasets writes it), so
``datasets.load_dataset("parquet", ...)`` yields PIL images, and an import needs no ``--images-from``.
:func:`export_imagefolder` writes a folder of image files and ``metadata.jsonl`` (datasets' ImageFolder,
which diffusers' ``train_text_to_image.py --train_data_dir`` reads). See docs/formats.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert, select, update

from t2ialign.core.fsutil import atomic_write, fsync_dir, loads_json_object, publish_dir
from t2ialign.label.auth import ADMIN_NAME, check_labeler_name
from t2ialign.store import (
    IMAGES_DIRNAME,
    LABEL_VALUES,
    ROLES,
    GoldRow,
    ImageRow,
    LabelerRow,
    LabelRow,
    PromptRow,
    Store,
)
from t2ialign.world.prompts import CATEGORIES, SPLITS, parse_prompt


def _name_ok(name: str) -> bool:
    try:
        check_labeler_name(name)
    except ValueError:
        return False
    return True


SCHEMA = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("prompt", pa.string()),
        ("category", pa.string()),  # null for a free caption outside the four categories
        ("split", pa.string()),
        ("labeler", pa.string()),
        ("labeler_is_simulated", pa.bool_()),
        ("label", pa.string()),  # good, bad or skip
        ("model_id", pa.string()),
        ("model_revision", pa.string()),  # nullable
        ("seed", pa.int64()),
        ("sampler", pa.string()),  # JSON object, keys sorted
        ("role", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("created_at", pa.string()),  # ISO 8601 UTC, microseconds: 2024-05-01T12:00:00.000000Z
        ("updated_at", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
FORMATS = (".jsonl", ".parquet")
# Fixed writer settings: the same table gives the same bytes (for a given pyarrow version).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, version="2.6")

# datasets' Image feature: the encoded file's bytes and a name; datasets decodes the bytes to a PIL image.
IMAGE_COLUMN = "image"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_HF_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.bool_(): "bool"}
IMAGE_ROWS_PER_GROUP = 256  # rows per Parquet row group with images: bounded memory, fixed bytes


def _hf_metadata(schema: pa.Schema) -> bytes:
    """The ``huggingface`` schema metadata datasets writes for these columns (Value types, Image)."""
    features = {
        f.name: {"_type": "Image"}
        if f.type == IMAGE_TYPE
        else {"dtype": _HF_DTYPES[f.type], "_type": "Value"}
        for f in schema
    }
    return json.dumps({"info": {"features": features}}).encode()


IMAGE_SCHEMA = SCHEMA.append(pa.field(IMAGE_COLUMN, IMAGE_TYPE))
IMAGE_SCHEMA = IMAGE_SCHEMA.with_metadata({b"huggingface": _hf_metadata(IMAGE_SCHEMA)})

_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT64 = (-(2**63), 2**63 - 1)
_CHUNK = 500  # bounded IN lists


def _format(path: Path) -> str:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"label files must end in {' or '.join(FORMATS)}, got {path.name!r}")
    return path.suffix.lower()


def _utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC), PostgreSQL aware ones: both as aware UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def format_time(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sampler_json(sampler: dict) -> str:
    return json.dumps(sampler, sort_keys=True, separators=(",", ":"), allow_nan=False)


# --- export -----------------------------------------------------------------------------------------------


def label_rows(store: Store) -> list[dict[str, Any]]:
    """Every label of the run as an export row (keys: ``COLUMNS``), sorted by (image sha256, labeler).
    Labels of gold images are left out: they measure raters, they are not feedback."""
    q = (
        select(LabelRow, ImageRow, PromptRow, LabelerRow)
        .join(ImageRow, LabelRow.image_id == ImageRow.id)
        .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
        .join(LabelerRow, LabelRow.labeler_id == LabelerRow.id)
        .where(LabelRow.image_id.not_in(select(GoldRow.image_id)))
    )
    with store.session() as s:
        rows = [
            {
                "image_sha256": image.sha256,
                "prompt": prompt.text,
                "category": prompt.category,
                "split": prompt.split,
                "labeler": labeler.name,
                "labeler_is_simulated": labeler.is_simulated,
                "label": label.value,
                "model_id": image.model_id,
                "model_revision": image.model_revision,
                "seed": image.seed,
                "sampler": _sampler_json(image.sampler),
                "role": image.role,
                "width": image.width,
                "height": image.height,
                "created_at": format_time(label.created_at),
                "updated_at": format_time(label.updated_at),
            }
            for label, image, prompt, labeler in s.execute(q)
        ]
    # Sorted here, not by the database, whose string collation may differ (PostgreSQL locales).
    rows.sort(key=lambda r: (r["image_sha256"], r["labeler"]))
    return rows


def export_labels(store: Store, path: str | Path, images: bool = False) -> int:
    """Write every label of the run to ``path`` (.jsonl or .parquet, by suffix); return the row count.

    ``images`` (Parquet only): add the column ``image`` with each row's PNG (datasets' ``Image`` feature),
    written by row groups of IMAGE_ROWS_PER_GROUP rows. The file is written atomically; two exports of the
    same labels are byte-identical.
    """
    path = Path(path)
    fmt = _format(path)
    if images and fmt != ".parquet":
        raise ValueError(f"only a Parquet export carries images (a datasets Image column), not {path.name!r}")
    rows = label_rows(store)
    if images:
        _write_with_images(store, rows, path)
        return len(rows)
    if fmt == ".jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode()
    else:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf, **PARQUET_OPTIONS)
        data = buf.getvalue()
    try:
        atomic_write(path, data)
    except OSError as e:  # e.g. /sys/x.jsonl or a read-only folder: a message, not a traceback
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from e
    return len(rows)


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A temporary file next to ``path``, opened for writing, fsynced and renamed to ``path`` when the
    block ends without error (removed otherwise): as ``atomic_write``, for output too big to hold."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_with_images(store: Store, rows: list[dict[str, Any]], path: Path) -> None:
    with _atomic_file(path) as f, pq.ParquetWriter(f, IMAGE_SCHEMA, **PARQUET_OPTIONS) as writer:
        for i in range(0, max(len(rows), 1), IMAGE_ROWS_PER_GROUP):
            group = rows[i : i + IMAGE_ROWS_PER_GROUP]
            for r in group:
                sha = r["image_sha256"]
                r[IMAGE_COLUMN] = {"bytes": _read_image(store.image_path(sha)), "path": f"{sha}.png"}
            writer.write_table(pa.Table.from_pylist(group, schema=IMAGE_SCHEMA))
            for r in group:  # the bytes go once written: memory stays one row group's
                del r[IMAGE_COLUMN]


def imagefolder_rows(store: Store, only_good: bool = False) -> list[dict[str, Any]]:
    """One row per labeled image (gold images left out), sorted by sha256: ``file_name`` (images/<sha>.png),
    ``text`` (the prompt), category, split, model_id, seed, the counts n_good / n_bad / n_skip of its
    labels and ``majority`` (good / bad / tie, None when every label is a skip). ``only_good``: only the
    images whose majority is good."""
    from t2ialign.label.stats import majority

    by_image: dict[str, list[dict]] = {}
    for r in label_rows(store):
        by_image.setdefault(r["image_sha256"], []).append(r)
    out = []
    for sha, labels in sorted(by_image.items()):
        values = [r["label"] for r in labels]
        vote = majority(values) if any(v != "skip" for v in values) else None
        if only_good and vote != "good":
            continue
        first = labels[0]
        out.append(
            {"file_name": f"images/{sha}.png", "text": first["prompt"], "image_sha256": sha}
            | {k: first[k] for k in ("category", "split", "model_id", "seed")}
            | {f"n_{v}": values.count(v) for v in LABEL_VALUES}
            | {"majority": vote}
        )
    return out


def export_imagefolder(store: Store, out_dir: str | Path, only_good: bool = False) -> int:
    """Write the labeled images as a datasets ImageFolder: ``out_dir/images/<sha256>.png`` and
    ``out_dir/metadata.jsonl`` (rows of :func:`imagefolder_rows`); return the image count.

    ``datasets.load_dataset("imagefolder", data_dir=out_dir)`` reads it (columns image, text, ...), and so
    does diffusers' ``train_text_to_image.py --train_data_dir OUT_DIR`` (its default ``--caption_column``
    is ``text``); for that script pass ``only_good``, which trains on every image it is given. The folder
    is built aside and put in place by renames (``publish_dir``); the same labels give the same files.
    """
    out = Path(out_dir)
    if out.exists() and not (out / "metadata.jsonl").is_file():
        raise ValueError(f"{out} exists and is not an imagefolder export: give a new folder")
    if not out.parent.is_dir():
        raise ValueError(f"no folder {out.parent} for the export")
    rows = imagefolder_rows(store, only_good=only_good)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (tmp / "images").mkdir()
        for r in rows:
            shutil.copyfile(store.image_path(r["image_sha256"]), tmp / r["file_name"])
        lines = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        atomic_write(tmp / "metadata.jsonl", lines.encode())
        fsync_dir(tmp)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(rows)


# --- import -----------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each row of a label file; ``where`` names the line or row for error messages."""
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"no label file {path}")
    if fmt == ".parquet":
        try:  # the labels only: the images of an export with images are read by _embedded_images
            names = [n for n in pq.read_schema(path).names if n != IMAGE_COLUMN]
            _check_columns(f"{path}", names)
            table = pq.read_table(path, columns=list(COLUMNS))
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path} is not a readable Parquet file: {e}") from e
        return [(f"{path} row {i + 1}", r) for i, r in enumerate(table.to_pylist())]
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from e
    for i, line in enumerate(lines):
        where = f"{path} line {i + 1}"
        if not line.strip():
            continue
        row = loads_json_object(line, where)
        _check_columns(where, list(row))
        out.append((where, row))
    return out


def _check_columns(where: str, names) -> None:
    missing = [c for c in COLUMNS if c not in names]
    unknown = [c for c in names if c not in COLUMNS]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)}")
    if unknown:
        raise ValueError(f"{where}: unknown column(s) {', '.join(unknown)}; expected {', '.join(COLUMNS)}")


def _no_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _parse_time(where: str, name: str, value) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be an ISO 8601 string, got {value!r}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"{where}: {name} is not ISO 8601: {value!r}") from e
    if dt.tzinfo is None:
        raise ValueError(f"{where}: {name} {value!r} has no time zone (write UTC, e.g. ...Z)")
    return dt.astimezone(UTC)


def _validate(where: str, row: dict) -> dict[str, Any]:
    """One row, checked and converted (sampler to a dict, times to datetimes, prompt attributes added)."""

    def fail(msg: str):
        raise ValueError(f"{where}: {msg}")

    def text(name: str, nullable: bool = False) -> str | None:
        v = row[name]
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v.strip():
            fail(f"{name} must be a non-empty string, got {v!r}")
        return v

    def integer(name: str, lo: int, hi: int) -> int:
        v = row[name]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            fail(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def one_of(name: str, allowed, nullable: bool = False) -> str | None:
        v = row[name]
        if not (v is None and nullable) and v not in allowed:
            fail(f"{name} must be one of {', '.join(allowed)}, got {v!r}")
        return v

    def labeler_name() -> str:
        # The names people see on /admin: the app's own rule (no NUL, control or bidi characters).
        v = row["labeler"]
        if not isinstance(v, str) or not (v == ADMIN_NAME or _name_ok(v)):
            fail(f"labeler must be a labeler name (letters, digits, . _ @ -), got {v!r}")
        return v

    sha = row["image_sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        fail(f"image_sha256 must be 64 lowercase hex digits, got {sha!r}")
    prompt = text("prompt")
    try:
        spec = parse_prompt(prompt)
    except ValueError as e:
        fail(f"prompt {prompt!r}: {e}")
    category = one_of("category", CATEGORIES, nullable=True)
    if category != spec.category:
        fail(f"prompt {prompt!r} is of category {spec.category!r}, not {category!r}")
    if not isinstance(row["labeler_is_simulated"], bool):
        fail(f"labeler_is_simulated must be true or false, got {row['labeler_is_simulated']!r}")
    sampler = None
    if isinstance(row["sampler"], str):
        try:  # NaN / Infinity are refused, as the store refuses them
            sampler = json.loads(row["sampler"], parse_constant=_no_constant)
        except ValueError:  # JSONDecodeError included
            pass
    if not isinstance(sampler, dict):
        fail(f"sampler must be a JSON object as a string, got {row['sampler']!r}")
    return {
        "sha256": sha,
        "prompt": prompt,
        "category": category,
        "split": one_of("split", SPLITS),
        "spec": spec,
        "labeler": labeler_name(),
        "is_simulated": row["labeler_is_simulated"],
        "value": one_of("label", LABEL_VALUES),
        "model_id": text("model_id"),
        "model_revision": text("model_revision", nullable=True),
        "seed": integer("seed", *_INT64),
        "sampler": sampler,
        "role": one_of("role", ROLES),
        "width": integer("width", 1, 2**31 - 1),
        "height": integer("height", 1, 2**31 - 1),
        "created_at": _parse_time(where, "created_at", row["created_at"]),
        "updated_at": _parse_time(where, "updated_at", row["updated_at"]),
    }


def _consistent(kind: str, key: str, where: str, seen: dict, fields: dict) -> None:
    """Rows that describe the same prompt / image / labeler must agree on it."""
    first = seen.setdefault(key, fields)
    if first != fields:
        diff = sorted(k for k in fields if fields[k] != first[k])
        raise ValueError(
            f"{where}: {kind} {key!r} is described differently by an earlier row ({', '.join(diff)})"
        )


def _image_fields(r: dict) -> dict:
    keys = ("prompt", "model_id", "model_revision", "seed", "sampler", "role", "width", "height")
    return {k: r[k] for k in keys}


def _prompt_fields(r: dict) -> dict:
    return {"category": r["category"], "split": r["split"], **r["spec"].as_dict()}


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a label export (.jsonl or .parquet): every row checked, and rows that describe
    the same prompt, image or labeler must agree. A clear ValueError names the line or row."""
    path = Path(path)
    rows = [(where, _validate(where, raw)) for where, raw in _read_rows(path)]
    prompts: dict[str, dict] = {}
    images: dict[str, dict] = {}
    labelers: dict[str, dict] = {}
    pairs: set[tuple[str, str]] = set()
    for where, r in rows:
        _consistent("prompt", r["prompt"], where, prompts, _prompt_fields(r))
        _consistent("image", r["sha256"], where, images, _image_fields(r))
        _consistent("labeler", r["labeler"], where, labelers, {"is_simulated": r["is_simulated"]})
        if (r["sha256"], r["labeler"]) in pairs:
            raise ValueError(f"{where}: a second label of image {r['sha256']} by {r['labeler']!r}")
        pairs.add((r["sha256"], r["labeler"]))
    return [r for _, r in rows]


def import_labels(store: Store, path: str | Path, images_from: str | Path | None = None) -> dict[str, Any]:
    """Recreate the labels of an export (.jsonl or .parquet) in this run, with their prompts, images and
    labelers; return counts of what was new, replaced and unchanged.

    Every row is validated first (:func:`read_labels`) and everything is written in one transaction, so
    a bad file writes nothing. See :func:`write_labels`.
    """
    path = Path(path)
    images_file = path if has_images(path) else None
    return write_labels(store, read_labels(path), images_from=images_from, images_file=images_file)


def has_images(path: str | Path) -> bool:
    """Whether ``path`` is a Parquet label export with an ``image`` column (``export_labels(images=True)``)."""
    path = Path(path)
    if path.suffix.lower() != ".parquet" or not path.is_file():
        return False
    try:
        return IMAGE_COLUMN in pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        return False


def _embedded_images(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The PNG bytes of the ``wanted`` images from a Parquet export with images, read by record batches
    (only the wanted ones are kept); ValueError for a picture that does not hash to its row's sha256."""
    found: dict[str, bytes] = {}
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=IMAGE_ROWS_PER_GROUP, columns=["image_sha256", IMAGE_COLUMN]):
        for sha, image in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            if sha in wanted and sha not in found:
                data = (image or {}).get("bytes")
                if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != sha:
                    raise ValueError(f"{path}: the image of row {sha} does not hash to {sha}")
                found[sha] = data
    return found


def write_labels(
    store: Store,
    rows: list[dict[str, Any]],
    images_from: str | Path | None = None,
    images_file: str | Path | None = None,
) -> dict[str, Any]:
    """Write rows of :func:`read_labels` into the run, in one transaction.

    An image the run does not hold yet must have its file in the run already, in ``images_file`` (a
    Parquet export with images, :func:`has_images`), or in the run directory ``images_from`` (copied from
    there, its sha256 checked); else a
    ValueError names it and nothing is written. An image row without its file would be handed to labelers
    as a broken picture, and its labels would train on nothing. What the run already
    holds must agree with the rows: a prompt, image or labeler of the same name but other fields is an
    error. A label the run already has for the same (image, labeler) is replaced by the row's, value and
    times, as a resend replaces a label. This restores recorded labels, so it writes them directly rather
    than through ``submit_label``, which stamps the time of the call and commits one label at a time.
    """
    prompts = {r["prompt"]: _prompt_fields(r) for r in rows}
    images = {r["sha256"]: _image_fields(r) for r in rows}
    labelers = {r["labeler"]: {"is_simulated": r["is_simulated"]} for r in rows}
    counts = {"rows": len(rows), "prompts": 0, "images": 0, "labelers": 0}
    counts["labels"] = {"new": 0, "replaced": 0, "unchanged": 0}
    copies = _files_to_copy(store, sorted(images), images_from, images_file)
    with store.session() as s:
        for sha, src in copies:  # inside the transaction: a failed copy writes no rows
            data = src if isinstance(src, bytes) else _read_image(src)
            if store.put_image_bytes(data) != sha:
                raise ValueError(f"{src} does not hash to {sha}: not the image the labels are about")
        prompt_ids = _ensure_prompts(s, prompts, counts)
        image_ids = _ensure_images(s, images, prompt_ids, counts)
        labeler_ids = _ensure_labelers(s, labelers, counts)
        stored = {}
        ids = sorted(set(image_ids.values()))
        for i in range(0, len(ids), _CHUNK):
            for lab in s.scalars(select(LabelRow).where(LabelRow.image_id.in_(ids[i : i + _CHUNK]))):
                stored[(lab.image_id, lab.labeler_id)] = lab
        new, changed = [], []
        for r in rows:
            key = (image_ids[r["sha256"]], labeler_ids[r["labeler"]])
            fields = {"value": r["value"], "created_at": r["created_at"], "updated_at": r["updated_at"]}
            old = stored.get(key)
            if old is None:
                new.append({"image_id": key[0], "labeler_id": key[1], **fields})
            elif (old.value, _utc(old.created_at), _utc(old.updated_at)) != tuple(fields.values()):
                changed.append({"id": old.id, **fields})
            else:
                counts["labels"]["unchanged"] += 1
        if new:
            s.execute(insert(LabelRow), new)
        if changed:
            s.execute(update(LabelRow), changed)
        counts["labels"]["new"], counts["labels"]["replaced"] = len(new), len(changed)
    return counts


def _files_to_copy(
    store: Store, shas: list[str], images_from: str | Path | None, images_file: str | Path | None = None
) -> list[tuple[str, Path | bytes]]:
    """(sha256, source file or the PNG's bytes) for each image the run has neither as a row nor as a file;
    ValueError naming the first one whose file is nowhere to be found."""
    known: set[str] = set()
    with store.session() as s:
        for i in range(0, len(shas), _CHUNK):
            known.update(s.scalars(select(ImageRow.sha256).where(ImageRow.sha256.in_(shas[i : i + _CHUNK]))))
    missing = {sha for sha in shas if sha not in known and not store.image_path(sha).is_file()}
    embedded = _embedded_images(Path(images_file), missing) if images_file is not None and missing else {}
    copies: list[tuple[str, Path | bytes]] = []
    for sha in shas:
        if sha not in missing:
            continue
        if sha in embedded:
            copies.append((sha, embedded[sha]))
            continue
        src = None if images_from is None else Path(images_from) / IMAGES_DIRNAME / sha[:2] / f"{sha}.png"
        if src is None or not src.is_file():
            where = "" if images_from is None else f" nor in {images_from}"
            raise ValueError(
                f"image {sha} has no file in the run{where}: copy the images first, or pass the run that "
                "holds them (label import --images-from RUN)"
            )
        copies.append((sha, src))
    return copies


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from e


def _ensure_prompts(s, prompts: dict[str, dict], counts: dict) -> dict[str, int]:
    texts = sorted(prompts)
    ids = {}
    for i in range(0, len(texts), _CHUNK):
        for p in s.scalars(select(PromptRow).where(PromptRow.text.in_(texts[i : i + _CHUNK]))):
            stored = {k: getattr(p, k) for k in prompts[p.text]}
            if stored != prompts[p.text]:
                raise ValueError(
                    f"prompt {p.text!r} is stored in this run as {stored}, the file has {prompts[p.text]}"
                )
            ids[p.text] = p.id
    new = [PromptRow(text=t, **prompts[t]) for t in texts if t not in ids]
    s.add_all(new)
    s.flush()
    ids.update((p.text, p.id) for p in new)
    counts["prompts"] = len(new)
    return ids


def _ensure_images(s, images: dict[str, dict], prompt_ids: dict[str, int], counts: dict) -> dict[str, int]:
    shas = sorted(images)
    text_of = {v: k for k, v in prompt_ids.items()}
    ids = {}
    for i in range(0, len(shas), _CHUNK):
        for im in s.scalars(select(ImageRow).where(ImageRow.sha256.in_(shas[i : i + _CHUNK]))):
            stored = {k: getattr(im, k) for k in images[im.sha256] if k != "prompt"}
            stored["prompt"] = text_of.get(im.prompt_id)
            if stored != images[im.sha256]:
                raise ValueError(
                    f"image {im.sha256} is stored in this run as {stored}, the file has {images[im.sha256]}"
                )
            ids[im.sha256] = im.id
    new = []
    for sha in shas:
        if sha not in ids:
            fields = dict(images[sha])
            new.append(ImageRow(sha256=sha, prompt_id=prompt_ids[fields.pop("prompt")], **fields))
    s.add_all(new)
    s.flush()
    ids.update((im.sha256, im.id) for im in new)
    counts["images"] = len(new)
    return ids


def _ensure_labelers(s, labelers: dict[str, dict], counts: dict) -> dict[str, int]:
    names = sorted(labelers)
    ids = {}
    for i in range(0, len(names), _CHUNK):
        for lab in s.scalars(select(LabelerRow).where(LabelerRow.name.in_(names[i : i + _CHUNK]))):
            if lab.is_simulated != labelers[lab.name]["is_simulated"]:
                kind = "simulated" if lab.is_simulated else "a person"
                raise ValueError(f"labeler {lab.name!r} is {kind} in this run; the file says otherwise")
            ids[lab.name] = lab.id
    new = [LabelerRow(name=n, is_simulated=labelers[n]["is_simulated"]) for n in names if n not in ids]
    s.add_all(new)
    s.flush()
    ids.update((lab.name, lab.id) for lab in new)
    counts["labelers"] = len(new)
    return ids
