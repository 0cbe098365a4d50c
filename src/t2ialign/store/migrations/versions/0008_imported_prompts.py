"""Imported prompts: free captions of public preference sets (split "imported", no shape nor attributes).

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-20
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WORLD = "split IN ('seen', 'unseen_prompt', 'unseen_object')"
_ALL = "split IN ('seen', 'unseen_prompt', 'unseen_object', 'imported')"
_IMPORTED = (
    "(split = 'imported' AND shape IS NULL AND category IS NULL AND count IS NULL AND color IS NULL "
    "AND background IS NULL) OR (split != 'imported' AND shape IS NOT NULL)"
)
_COLUMNS = "id, text, category, split, shape, count, color, background, created_at"


def _create_prompts(imported: bool) -> None:
    checks = [sa.CheckConstraint(_ALL if imported else _WORLD, name=op.f("ck_prompts_split"))]
    if imported:
        checks.append(sa.CheckConstraint(_IMPORTED, name=op.f("ck_prompts_imported")))
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("split", sa.String(), nullable=False),
        sa.Column("shape", sa.String(), nullable=imported),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("color", sa.String(), nullable=True),
        sa.Column("background", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "category IS NULL OR category IN ('count', 'color', 'background', 'combination')",
            name=op.f("ck_prompts_category"),
        ),
        *checks,
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("text", name=op.f("uq_prompts_text")),
    )


def _recreate_sqlite(imported: bool) -> None:
    """SQLite alters no constraint: the table is made anew, in the open transaction (Store.open's).

    Not batch mode: it drops the old table after copying its rows into the new one, so the drop leaves
    the foreign keys of images, comparisons and pairs on prompts counted as broken until commit, and the
    commit fails (foreign_keys cannot be switched off inside a transaction). Here the rows go to a plain
    copy first; with the checks deferred, the drop counts the broken references, and inserting the rows
    into the new table counts them mended again before the commit checks.
    """
    op.execute("PRAGMA defer_foreign_keys = ON")  # reset by SQLite itself at commit
    op.execute(f"CREATE TABLE _prompts_0008 AS SELECT {_COLUMNS} FROM prompts")
    op.drop_table("prompts")
    _create_prompts(imported)
    op.execute(f"INSERT INTO prompts ({_COLUMNS}) SELECT {_COLUMNS} FROM _prompts_0008 ORDER BY id")
    op.drop_table("_prompts_0008")


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _recreate_sqlite(imported=True)
        return
    op.drop_constraint(op.f("ck_prompts_split"), "prompts", type_="check")
    op.alter_column("prompts", "shape", existing_type=sa.String(), nullable=True)
    op.create_check_constraint(op.f("ck_prompts_split"), "prompts", _ALL)
    op.create_check_constraint(op.f("ck_prompts_imported"), "prompts", _IMPORTED)


def downgrade() -> None:
    # Imported captions have no place in the old schema: downgrading a run that holds some fails (shape
    # NOT NULL, the split check) rather than dropping them with their images and answers.
    if op.get_context().dialect.name == "sqlite":
        _recreate_sqlite(imported=False)
        return
    op.drop_constraint(op.f("ck_prompts_imported"), "prompts", type_="check")
    op.drop_constraint(op.f("ck_prompts_split"), "prompts", type_="check")
    op.alter_column("prompts", "shape", existing_type=sa.String(), nullable=False)
    op.create_check_constraint(op.f("ck_prompts_split"), "prompts", _WORLD)
