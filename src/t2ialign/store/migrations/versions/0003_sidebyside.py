"""Side-by-side human evaluation (paper Fig. 3): comparisons, their queries, images, votes and leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("first_model", sa.String(), nullable=False),
        sa.Column("second_model", sa.String(), nullable=False),
        sa.Column("raters_per_query", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("raters_per_query >= 1", name=op.f("ck_comparisons_raters_per_query")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons")),
        sa.UniqueConstraint("name", name=op.f("uq_comparisons_name")),
    )
    op.create_table(
        "comparison_queries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("first_shown_as", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("first_shown_as IN ('A', 'B')", name=op.f("ck_comparison_queries_first_shown_as")),
        sa.ForeignKeyConstraint(
            ["comparison_id"],
            ["comparisons.id"],
            name=op.f("fk_comparison_queries_comparison_id_comparisons"),
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_comparison_queries_prompt_id_prompts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_queries")),
        sa.UniqueConstraint(
            "comparison_id", "prompt_id", name=op.f("uq_comparison_queries_comparison_id_prompt_id")
        ),
    )
    op.create_table(
        "comparison_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint("model IN ('first', 'second')", name=op.f("ck_comparison_images_model")),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_comparison_images_image_id_images")
        ),
        sa.ForeignKeyConstraint(
            ["query_id"],
            ["comparison_queries.id"],
            name=op.f("fk_comparison_images_query_id_comparison_queries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_images")),
        sa.UniqueConstraint(
            "query_id", "model", "image_id", name=op.f("uq_comparison_images_query_id_model_image_id")
        ),
    )
    op.create_table(
        "comparison_votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("alignment", sa.String(), nullable=False),
        sa.Column("fidelity", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "alignment IN ('first', 'second', 'tie')", name=op.f("ck_comparison_votes_alignment")
        ),
        sa.CheckConstraint(
            "fidelity IN ('first', 'second', 'tie')", name=op.f("ck_comparison_votes_fidelity")
        ),
        sa.ForeignKeyConstraint(
            ["labeler_id"], ["labelers.id"], name=op.f("fk_comparison_votes_labeler_id_labelers")
        ),
        sa.ForeignKeyConstraint(
            ["query_id"],
            ["comparison_queries.id"],
            name=op.f("fk_comparison_votes_query_id_comparison_queries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_votes")),
        sa.UniqueConstraint("query_id", "labeler_id", name=op.f("uq_comparison_votes_query_id_labeler_id")),
    )
    op.create_table(
        "comparison_leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["labeler_id"], ["labelers.id"], name=op.f("fk_comparison_leases_labeler_id_labelers")
        ),
        sa.ForeignKeyConstraint(
            ["query_id"],
            ["comparison_queries.id"],
            name=op.f("fk_comparison_leases_query_id_comparison_queries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_leases")),
        sa.UniqueConstraint("query_id", "labeler_id", name=op.f("uq_comparison_leases_query_id_labeler_id")),
    )


def downgrade() -> None:
    op.drop_table("comparison_leases")
    op.drop_table("comparison_votes")
    op.drop_table("comparison_images")
    op.drop_table("comparison_queries")
    op.drop_table("comparisons")
