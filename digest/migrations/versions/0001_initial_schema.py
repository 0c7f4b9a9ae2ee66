"""Initial schema: papers, subscribers, topic profiles, deliveries and their items.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _status(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "papers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(128), nullable=False),
        sa.Column("title_key", sa.String(64), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("abstract", sa.Text(), nullable=False),
        sa.Column("authors", sa.JSON(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("pdf_url", sa.Text(), nullable=True),
        sa.Column("published_at", TS, nullable=True),
        sa.Column("upvotes", sa.Integer(), nullable=True),
        sa.Column("comments", sa.Integer(), nullable=True),
        sa.Column("stars", sa.Integer(), nullable=True),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("source_id", name="uq_papers_source_id"),
    )
    op.create_index("ix_papers_first_seen_at", "papers", ["first_seen_at"])
    op.create_index("ix_papers_title_key", "papers", ["title_key"])

    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column(
            "status",
            _status("subscriber_status", "pending", "active", "unsubscribed", "bounced",
                    "complained"),
            nullable=False,
        ),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("send_hour", sa.Integer(), nullable=False),
        sa.Column("papers_per_digest", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("confirmed_at", TS, nullable=True),
        sa.Column("unsubscribed_at", TS, nullable=True),
    )
    op.create_index("ix_subscribers_status", "subscribers", ["status"])
    op.create_index(
        "uq_subscribers_email_lower", "subscribers", [sa.text("lower(email)")], unique=True
    )

    op.create_table(
        "topic_profiles",
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("topics", sa.Text(), nullable=False),
        sa.Column("exclude", sa.Text(), nullable=False),
        sa.Column("trending_fallback", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("digest_date", sa.Date(), nullable=False),
        sa.Column(
            "status", _status("delivery_status", "claimed", "sent", "failed", "in_doubt"),
            nullable=False,
        ),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("paper_count", sa.Integer(), nullable=False),
        sa.Column("trending_fallback", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.UniqueConstraint("subscriber_id", "digest_date", name="uq_deliveries_subscriber_date"),
    )
    op.create_index("ix_deliveries_digest_date_status", "deliveries", ["digest_date", "status"])

    op.create_table(
        "delivery_items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "delivery_id",
            sa.Integer(),
            sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "paper_id", sa.Integer(), sa.ForeignKey("papers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.UniqueConstraint(
            "subscriber_id", "paper_id", name="uq_delivery_items_subscriber_paper"
        ),
    )
    op.create_index("ix_delivery_items_delivery_id", "delivery_items", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("delivery_items")
    op.drop_table("deliveries")
    op.drop_table("topic_profiles")
    op.drop_index("uq_subscribers_email_lower", table_name="subscribers")
    op.drop_table("subscribers")
    op.drop_table("papers")
