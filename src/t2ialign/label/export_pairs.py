"""Export and import of a run's pairwise preferences as JSONL or Parquet (``export`` does it for labels):
one row per answer, naming the two images by sha256 (image_a, image_b: the pair's stored order, so
``choice`` "A" means image_a is better), the prompt, the pair's source and the rater.

Two exports of the same answers are byte-identical: rows are sorted by (image_a, image_b, rater), times
are the answers' own. The file carries no images: an import needs them in the run already (``label
import`` of the labels' export brings prompts and images, with ``--images-from``).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert, select, update

from t2ialign.core.fsutil import atomic_write, loads_json_object
from t2ialign.label.export import _ensure_labelers, _format, _name_ok, _parse_time, format_time
from t2ialign.store import PREFERENCE_CHOICES, PreferenceRow, Store, check_source
from t2ialign.store.preferences import _add_pairs

SCHEMA = pa.schema(
    [
        ("image_a_sha256", pa.string()),
        ("image_b_sha256", pa.string()),
        ("prompt", pa.string()),
        ("category", pa.string()),  # null for a free caption
        ("split", pa.string()),
        ("source", pa.string()),  # the pair's: "app", "import:pickapic", ...
        ("labeler", pa.string()),
        ("labeler_is_simulated", pa.bool_()),
        ("choice", pa.string()),  # A (image_a better), B or tie
        ("preferred_sha256", pa.string()),  # the better image; null for a tie
        ("created_at", pa.string()),  # ISO 8601 UTC, microseconds
        ("updated_at", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, version="2.6")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def preference_rows(store: Store) -> list[dict[str, Any]]:
    """Every answer of the run as an export row (keys ``COLUMNS``), sorted by (image_a, image_b, rater)."""
    rows = [
        {
            "image_a_sha256": r["image_a"],
            "image_b_sha256": r["image_b"],
            "prompt": r["prompt"],
            "category": r["category"],
            "split": r["split"],
            "source": r["source"],
            "labeler": r["labeler"],
            "labeler_is_simulated": r["is_simulated"],
            "choice": r["choice"],
            "preferred_sha256": r["preferred"],
            "created_at": format_time(r["created_at"]),
            "updated_at": format_time(r["updated_at"]),
        }
        for r in store.preferences()
    ]
    rows.sort(key=lambda r: (r["image_a_sha256"], r["image_b_sha256"], r["labeler"]))
    return rows


def export_preferences(store: Store, path: str | Path) -> int:
    """Write every answer of the run to ``path`` (.jsonl or .parquet, by suffix), atomically; the count."""
    path = Path(path)
    rows = preference_rows(store)
    if _format(path) == ".jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    else:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf, **PARQUET_OPTIONS)
        data = buf.getvalue()
    try:
        atomic_write(path, data)
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from e
    return len(rows)


# --- import -----------------------------------------------------------------------------------------------


def _raw_rows(path: Path) -> list[tuple[str, dict]]:
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"no preference file {path}")
    if fmt == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path} is not a readable Parquet file: {e}") from e
        return [(f"{path} row {i + 1}", r) for i, r in enumerate(rows)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from e
    return [
        (f"{path} line {i + 1}", loads_json_object(x, f"{path} line {i + 1}"))
        for i, x in enumerate(lines)
        if x.strip()
    ]


def _validate(where: str, row: dict) -> dict[str, Any]:
    if set(row) != set(COLUMNS):
        missing, unknown = sorted(set(COLUMNS) - set(row)), sorted(set(row) - set(COLUMNS))
        raise ValueError(f"{where}: missing column(s) {missing}, unknown column(s) {unknown}")
    for side in ("image_a_sha256", "image_b_sha256"):
        if not isinstance(row[side], str) or not _SHA256.fullmatch(row[side]):
            raise ValueError(f"{where}: {side} must be 64 lowercase hex digits, got {row[side]!r}")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise ValueError(f"{where}: prompt must be a non-empty string")
    try:
        check_source(row["source"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not isinstance(row["labeler"], str) or not _name_ok(row["labeler"]):
        raise ValueError(
            f"{where}: labeler must be a labeler name (letters, digits, . _ @ -), got {row['labeler']!r}"
        )
    if not isinstance(row["labeler_is_simulated"], bool):
        raise ValueError(f"{where}: labeler_is_simulated must be true or false")
    if row["choice"] not in PREFERENCE_CHOICES:
        raise ValueError(f"{where}: choice must be one of A, B, tie, got {row['choice']!r}")
    return {
        **{k: row[k] for k in ("image_a_sha256", "image_b_sha256", "prompt", "source", "labeler", "choice")},
        "is_simulated": row["labeler_is_simulated"],
        "created_at": _parse_time(where, "created_at", row["created_at"]),
        "updated_at": _parse_time(where, "updated_at", row["updated_at"]),
    }


def read_preferences(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a preference export; a clear ValueError names the line or row."""
    rows = [(where, _validate(where, raw)) for where, raw in _raw_rows(Path(path))]
    seen: dict[tuple, str] = {}
    for where, r in rows:
        key = (*sorted((r["image_a_sha256"], r["image_b_sha256"])), r["labeler"])
        if key in seen:
            raise ValueError(f"{where}: a second answer of {r['labeler']!r} to the pair of {seen[key]}")
        seen[key] = where
    return [r for _, r in rows]


def import_preferences_file(store: Store, path: str | Path) -> dict[str, Any]:
    """Recreate the answers of an export in this run, in one transaction: pairs (with the file's
    sources), raters (as the file says: simulated or not) and answers with their own times. The images
    and prompts must be in the run. Returns counts: raters (new), new, replaced, unchanged answers."""
    rows = read_preferences(path)
    counts: dict[str, Any] = {"rows": len(rows), "labelers": 0, "new": 0, "replaced": 0, "unchanged": 0}
    with store.session() as s:
        pair_ids = {}
        for source in sorted({r["source"] for r in rows}):
            mine = [r for r in rows if r["source"] == source]
            made = _add_pairs(
                s,
                store.image_path,
                [(r["prompt"], r["image_a_sha256"], r["image_b_sha256"]) for r in mine],
                source,
            )
            pair_ids.update({id(r): m for r, m in zip(mine, made, strict=True)})
        raters = _ensure_labelers(
            s, {r["labeler"]: {"is_simulated": r["is_simulated"]} for r in rows}, counts
        )
        stored = {}
        ids = sorted({m[0] for m in pair_ids.values()})
        for i in range(0, len(ids), 500):  # bounded IN lists
            for p in s.scalars(select(PreferenceRow).where(PreferenceRow.pair_id.in_(ids[i : i + 500]))):
                stored[(p.pair_id, p.labeler_id)] = p
        new, changed = [], []
        for r in rows:
            pair_id, flipped = pair_ids[id(r)]
            choice = {"A": "B", "B": "A", "tie": "tie"}[r["choice"]] if flipped else r["choice"]
            fields = {"choice": choice, "created_at": r["created_at"], "updated_at": r["updated_at"]}
            old = stored.get((pair_id, raters[r["labeler"]]))
            if old is None:
                new.append({"pair_id": pair_id, "labeler_id": raters[r["labeler"]], **fields})
            elif (old.choice, format_time(old.created_at), format_time(old.updated_at)) != (
                choice,
                format_time(r["created_at"]),
                format_time(r["updated_at"]),
            ):
                changed.append({"id": old.id, **fields})
            else:
                counts["unchanged"] += 1
        if new:
            s.execute(insert(PreferenceRow), new)
        if changed:
            s.execute(update(PreferenceRow), changed)
        counts["new"], counts["replaced"] = len(new), len(changed)
    return counts
