"""Delivery ledger for many workers: claim tokens, leases, attempts, more statuses.

A claimed row now names the attempt that owns it (claim_token) until lease_until, so a
worker killed mid-batch leaves rows another worker can take over, and rows that were being
handed to the mail server when it died are found and reported in doubt.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD = ("claimed", "sent", "failed", "in_doubt")
NEW = ("claimed", "sending", "sent", "failed", "in_doubt", "retrying", "skipped")


def _check(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    # SQLite rebuilds the table; reflecting its foreign key's target warns about the
    # lower(email) index, which is not touched.
    warnings.filterwarnings("ignore", message=".*expression-based index.*")
    with op.batch_alter_table("deliveries", recreate="auto") as batch:
        batch.drop_constraint("delivery_status", type_="check")
        batch.create_check_constraint("delivery_status", _check(NEW))
        batch.add_column(sa.Column("claim_token", sa.String(36), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.create_index("ix_deliveries_status_lease", "deliveries", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_status_lease", table_name="deliveries")
    op.execute(f"DELETE FROM deliveries WHERE NOT ({_check(OLD)})")
    with op.batch_alter_table("deliveries", recreate="auto") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_until")
        batch.drop_column("claim_token")
        batch.drop_constraint("delivery_status", type_="check")
        batch.create_check_constraint("delivery_status", _check(OLD))
