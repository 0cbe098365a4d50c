"""The run store: one run directory holding the database, the images and the metrics of every stage.

Layout of a run directory::

    t2ialign.db      SQLite database (or any SQLAlchemy URL given to ``Store.open``, e.g. PostgreSQL)
    images/ab/abcd…png  PNG files named by the sha256 of their bytes (content-addressed, never rewritten)
    metrics.json     one top-level section per stage, rewritten atomically

The schema is owned by the Alembic migrations shipped in ``t2ialign/store/migrations``; ``Store.open`` upgrades
the database to the newest revision, so an old run directory keeps working with a newer package. A model
change here without a new migration fails ``tests/test_store.py``.

Every method validates its input and raises ``ValueError`` before writing anything; each method is one
transaction, so a failure leaves the database as it was.

The package: ``core`` (the Store, prompts, images, metrics), ``labels`` (labelers, labels, leases),
``comparisons`` (side-by-side queries and votes), ``preferences`` (pairwise preferences A / B / tie
on pairs of images of one prompt: made here, answered in the app, imported from public data), ``engine`` (engine, migrations, opening checks) and
``_common`` (what they share). Import from ``t2ialign.store``.
"""

from __future__ import annotations

from t2ialign.store._common import (
    DB_FILENAME,
    IMAGES_DIRNAME,
    METRICS_FILENAME,
    NotLeased,
    StoreError,
    VoteConflict,
)
from t2ialign.store.comparisons import MAX_COMPARISON_SET, shown_to_choice
from t2ialign.store.core import MAX_CAPTION_CHARS, Store, check_caption, open_existing
from t2ialign.store.engine import (
    MIGRATIONS_DIR,
    SQLITE_BUSY_TIMEOUT_MS,
    SUPPORTED_DIALECTS,
    alembic_config,
    make_engine,
)
from t2ialign.store.preferences import check_source
from t2ialign.store.schema import (
    APP_SOURCE,
    IMPORTED_SPLIT,
    LABEL_VALUES,
    NAMING_CONVENTION,
    PREFERENCE_CHOICES,
    PROMPT_SPLITS,
    ROLES,
    SHOWN_SIDES,
    VOTE_CHOICES,
    Base,
    ComparisonImageRow,
    ComparisonLeaseRow,
    ComparisonQueryRow,
    ComparisonRow,
    ComparisonVoteRow,
    GoldRow,
    ImageRow,
    ImageState,
    LabelerRow,
    LabelRow,
    LeaseRow,
    PairState,
    PreferenceLeaseRow,
    PreferencePairRow,
    PreferenceRow,
    PromptRow,
    QueryState,
    SessionRow,
)

# the store's API names its rows and values: they are importable from here
__all__ = [
    "APP_SOURCE",
    "DB_FILENAME",
    "IMAGES_DIRNAME",
    "IMPORTED_SPLIT",
    "LABEL_VALUES",
    "MAX_CAPTION_CHARS",
    "MAX_COMPARISON_SET",
    "METRICS_FILENAME",
    "MIGRATIONS_DIR",
    "NotLeased",
    "NAMING_CONVENTION",
    "PREFERENCE_CHOICES",
    "PROMPT_SPLITS",
    "ROLES",
    "SHOWN_SIDES",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SUPPORTED_DIALECTS",
    "VOTE_CHOICES",
    "Base",
    "ComparisonImageRow",
    "ComparisonLeaseRow",
    "ComparisonQueryRow",
    "ComparisonRow",
    "ComparisonVoteRow",
    "GoldRow",
    "ImageRow",
    "ImageState",
    "LabelRow",
    "LabelerRow",
    "LeaseRow",
    "PairState",
    "PreferenceLeaseRow",
    "PreferencePairRow",
    "PreferenceRow",
    "PromptRow",
    "QueryState",
    "SessionRow",
    "Store",
    "StoreError",
    "VoteConflict",
    "alembic_config",
    "check_caption",
    "check_source",
    "make_engine",
    "open_existing",
    "shown_to_choice",
]
