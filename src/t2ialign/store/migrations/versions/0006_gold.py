"""Gold images: images with a known answer, mixed into the labeling queue to measure raters' accuracy.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gold_answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("answer", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("answer IN ('good', 'bad')", name=op.f("ck_gold_answers_answer")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_gold_answers_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gold_answers")),
        sa.UniqueConstraint("image_id", name=op.f("uq_gold_answers_image_id")),
    )


def downgrade() -> None:
    op.drop_table("gold_answers")
