"""Pairwise preferences: pairs of two images of one prompt, raters' answers A / B / tie, and leases.

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "preference_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("image_a_id", sa.Integer(), nullable=False),
        sa.Column("image_b_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("image_a_id < image_b_id", name=op.f("ck_preference_pairs_image_order")),
        sa.ForeignKeyConstraint(
            ["image_a_id"], ["images.id"], name=op.f("fk_preference_pairs_image_a_id_images")
        ),
        sa.ForeignKeyConstraint(
            ["image_b_id"], ["images.id"], name=op.f("fk_preference_pairs_image_b_id_images")
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_preference_pairs_prompt_id_prompts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preference_pairs")),
        sa.UniqueConstraint(
            "image_a_id", "image_b_id", name=op.f("uq_preference_pairs_image_a_id_image_b_id")
        ),
    )
    op.create_index(op.f("ix_preference_pairs_prompt_id"), "preference_pairs", ["prompt_id"])
    op.create_table(
        "preferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie')", name=op.f("ck_preferences_choice")),
        sa.ForeignKeyConstraint(
            ["labeler_id"], ["labelers.id"], name=op.f("fk_preferences_labeler_id_labelers")
        ),
        sa.ForeignKeyConstraint(
            ["pair_id"], ["preference_pairs.id"], name=op.f("fk_preferences_pair_id_preference_pairs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preferences")),
        sa.UniqueConstraint("pair_id", "labeler_id", name=op.f("uq_preferences_pair_id_labeler_id")),
    )
    op.create_index(op.f("ix_preferences_labeler_id"), "preferences", ["labeler_id"])
    op.create_table(
        "preference_leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["labeler_id"], ["labelers.id"], name=op.f("fk_preference_leases_labeler_id_labelers")
        ),
        sa.ForeignKeyConstraint(
            ["pair_id"], ["preference_pairs.id"], name=op.f("fk_preference_leases_pair_id_preference_pairs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preference_leases")),
        sa.UniqueConstraint("pair_id", "labeler_id", name=op.f("uq_preference_leases_pair_id_labeler_id")),
    )


def downgrade() -> None:
    op.drop_table("preference_leases")
    op.drop_index(op.f("ix_preferences_labeler_id"), table_name="preferences")
    op.drop_table("preferences")
    op.drop_index(op.f("ix_preference_pairs_prompt_id"), table_name="preference_pairs")
    op.drop_table("preference_pairs")
