"""Subscription lifecycle: history, suppression list, webhook ledger, and pausing.

`subscriber_events` keeps each subscriber's history (subscribed, confirmed, unsubscribed,
bounced...), `suppressions` the addresses nothing may be sent to, and `webhook_events` the
provider events and signed-request nonces already handled, so a retried or replayed webhook
changes nothing. `subscribers.paused` stops digests without unsubscribing.

A column added with a server default needs no table rebuild on SQLite, so the subscribers
table (and the rows that cascade from it) is left as it is.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

EVENT_KINDS = (
    "subscribed", "confirmation_sent", "notice_sent", "confirmed", "preferences_changed",
    "paused", "resumed", "unsubscribed", "resubscribed", "bounced", "complained",
    "suppressed", "unsuppressed",
)  # fmt: skip


def _enum(name: str, values: tuple[str, ...], length: int) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=length)


def upgrade() -> None:
    op.add_column(
        "subscribers",
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "subscriber_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", _enum("subscriber_event_kind", EVENT_KINDS, 24), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index(
        "ix_subscriber_events_subscriber_id", "subscriber_events", ["subscriber_id", "id"]
    )
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column(
            "reason",
            _enum("suppression_reason", ("bounced", "complained", "manual"), 16),
            nullable=False,
        ),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("address", name="uq_suppressions_address"),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("received_at", TS, nullable=False),
        sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event"),
    )


def downgrade() -> None:
    op.drop_table("webhook_events")
    op.drop_table("suppressions")
    op.drop_index("ix_subscriber_events_subscriber_id", table_name="subscriber_events")
    op.drop_table("subscriber_events")
    # Not batch mode: rebuilding subscribers on SQLite would cascade-delete its dependents.
    op.drop_column("subscribers", "paused")
