"""Sign-up emails are sent from the database, not from a process's memory.

`signup_requests.claimed_until`: the sender thread that took a request owns it until then; a
request whose email was neither sent nor refused, and whose claim has run out (its process
stopped), is taken by the next sender, so a restart or a backlog loses no confirmation email.
The index on created_at finds the recent requests still to send.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signup_requests") as batch:
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_signup_requests_created_at", "signup_requests", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_signup_requests_created_at", table_name="signup_requests")
    with op.batch_alter_table("signup_requests") as batch:
        batch.drop_column("claimed_until")
