"""Papers are new from when their source dated them, not from when we first saw them.

`papers.listed_at` is the day the source listed the paper (the daily-papers site: the day it
featured it) or else published it, set once at ingest. A day's candidates are the papers whose
`coalesce(listed_at, first_seen_at)` falls in its window (`models.paper_new_at`), so a first
ingest of an archive brings no paper from 2019 as new; the expression index keeps that query
an index range scan on both backends.

Existing rows keep an empty `listed_at` and so stay new as they were, from when they were first
seen, until an ingest that dates them fills it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("papers", sa.Column("listed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_papers_new_at", "papers", [sa.text("coalesce(listed_at, first_seen_at)")]
    )


def downgrade() -> None:
    op.drop_index("ix_papers_new_at", table_name="papers")
    with op.batch_alter_table("papers") as batch:
        batch.drop_column("listed_at")
