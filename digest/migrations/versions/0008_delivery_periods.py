"""One digest per subscriber per period: a day for a daily reader, an ISO week for a weekly one.

`deliveries.period` names the period a digest belongs to (`models.delivery_period`): the
digest's local date ("2026-12-07") for a daily reader, the ISO week of that date
("2026-W50") for a weekly one. A unique index on (subscriber_id, period) lets the database
refuse a second weekly digest in one week, as the existing unique (subscriber_id,
digest_date) still refuses a second digest on one day, whatever the cadence.

Every existing row was a daily digest: its period is its date. A unique index (not a table
constraint) needs no table rebuild on SQLite; the column is added with an empty default that
the backfill replaces, and PostgreSQL then drops that default (SQLite cannot without a
rebuild; the models always write the period).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "deliveries", sa.Column("period", sa.String(10), nullable=False, server_default="")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE deliveries SET period = to_char(digest_date, 'YYYY-MM-DD')")
        op.alter_column("deliveries", "period", server_default=None)
    else:  # SQLite keeps a date as its ISO text
        op.execute("UPDATE deliveries SET period = digest_date")
    op.create_index(
        "uq_deliveries_subscriber_period", "deliveries", ["subscriber_id", "period"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_deliveries_subscriber_period", table_name="deliveries")
    # SQLite rebuilds the table; reflecting its foreign key's target warns about the
    # lower(email) index, which is not touched.
    warnings.filterwarnings("ignore", message=".*expression-based index.*")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("period")
