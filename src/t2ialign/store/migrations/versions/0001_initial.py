"""Initial schema: prompts, images, labelers, labels.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

A migration is a frozen snapshot: the allowed values of the CHECK constraints are written out here, not
imported from the package, so that this revision means the same thing forever.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("split", sa.String(), nullable=False),
        sa.Column("shape", sa.String(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("color", sa.String(), nullable=True),
        sa.Column("background", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "category IS NULL OR category IN ('count', 'color', 'background', 'combination')",
            name=op.f("ck_prompts_category"),
        ),
        sa.CheckConstraint(
            "split IN ('seen', 'unseen_prompt', 'unseen_object')", name=op.f("ck_prompts_split")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("text", name=op.f("uq_prompts_text")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("model_revision", sa.String(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("sampler", sa.JSON(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('human', 'unlabeled', 'eval')", name=op.f("ck_images_role")),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_images_prompt_id_prompts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("sha256", name=op.f("uq_images_sha256")),
    )
    op.create_index(op.f("ix_images_prompt_id"), "images", ["prompt_id"], unique=False)
    op.create_table(
        "labelers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("is_simulated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelers")),
        sa.UniqueConstraint("name", name=op.f("uq_labelers_name")),
    )
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("value IN ('good', 'bad', 'skip')", name=op.f("ck_labels_value")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_labels_image_id_images")),
        sa.ForeignKeyConstraint(["labeler_id"], ["labelers.id"], name=op.f("fk_labels_labeler_id_labelers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint("image_id", "labeler_id", name=op.f("uq_labels_image_id_labeler_id")),
    )
    op.create_index(op.f("ix_labels_image_id"), "labels", ["image_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_labels_image_id"), table_name="labels")
    op.drop_table("labels")
    op.drop_table("labelers")
    op.drop_index(op.f("ix_images_prompt_id"), table_name="images")
    op.drop_table("images")
    op.drop_table("prompts")
