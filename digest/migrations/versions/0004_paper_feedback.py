"""Readers' feedback: clicks and "more / less like this" votes on the papers of their digests.

The profile of each subscriber learns from these rows for their next digest (`feedback.py`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paper_feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "paper_id", sa.Integer(), sa.ForeignKey("papers.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "kind",
            sa.Enum("click", "more", "less", name="feedback_kind", native_enum=False,
                    create_constraint=True, length=8),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "subscriber_id", "paper_id", "kind", name="uq_paper_feedback_subscriber_paper_kind"
        ),
    )
    op.create_index(
        "ix_paper_feedback_subscriber_id", "paper_feedback", ["subscriber_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_paper_feedback_subscriber_id", table_name="paper_feedback")
    op.drop_table("paper_feedback")
