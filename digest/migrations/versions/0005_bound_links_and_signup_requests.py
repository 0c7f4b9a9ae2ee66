"""Links bound to the person they were made for; sign-up requests kept apart.

`subscribers.link_key` is a random key every signed link names (existing rows get one each),
and SQLite stops giving a deleted subscriber's id to the next one (AUTOINCREMENT), so an old
link can never act on a newcomer. `signup_requests` holds what a visitor typed on the
subscribe form until the address's owner confirms it.

SQLite can only add AUTOINCREMENT by rebuilding the table. The rebuild keeps every row and
id; the environment turns foreign keys off, so the rows pointing at subscribers stay. The
lower(email) index cannot be reflected, so it is made again after the rebuild.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import secrets
import warnings

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OUTCOMES = (
    "received", "confirmation", "confirmation_recent", "already_active",
    "already_active_recent", "suppressed",
)  # fmt: skip


def upgrade() -> None:
    warnings.filterwarnings("ignore", message=".*expression-based index.*")
    op.add_column("subscribers", sa.Column("link_key", sa.String(32), nullable=True))
    _give_each_subscriber_a_link_key()
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch:
            batch.alter_column("link_key", existing_type=sa.String(32), nullable=False)
        _email_index()
    else:
        op.alter_column("subscribers", "link_key", existing_type=sa.String(32), nullable=False)
    op.create_table(
        "signup_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("link_key", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("topics", sa.Text(), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("send_hour", sa.Integer(), nullable=False),
        sa.Column("papers_per_digest", sa.Integer(), nullable=False),
        sa.Column(
            "outcome",
            sa.Enum(*OUTCOMES, name="signup_outcome", native_enum=False, create_constraint=True,
                    length=24),
            nullable=False,
        ),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("emailed_at", TS, nullable=True),
        sa.Column("email_error", sa.Text(), nullable=True),
        sa.Column("confirmed_at", TS, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_signup_requests_address", "signup_requests", ["address", "created_at"])
    op.create_index("ix_signup_requests_subscriber_id", "signup_requests", ["subscriber_id"])


def _give_each_subscriber_a_link_key() -> None:
    bind = op.get_bind()
    ids = bind.execute(sa.text("SELECT id FROM subscribers")).scalars().all()
    if ids:
        bind.execute(
            sa.text("UPDATE subscribers SET link_key = :key WHERE id = :id"),
            [{"id": i, "key": secrets.token_urlsafe(16)} for i in ids],
        )


def _email_index() -> None:
    op.create_index(
        "uq_subscribers_email_lower", "subscribers", [sa.text("lower(email)")], unique=True
    )


def downgrade() -> None:
    warnings.filterwarnings("ignore", message=".*expression-based index.*")
    op.drop_index("ix_signup_requests_subscriber_id", table_name="signup_requests")
    op.drop_index("ix_signup_requests_address", table_name="signup_requests")
    op.drop_table("signup_requests")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ) as batch:
            batch.drop_column("link_key")
        _email_index()
    else:
        op.drop_column("subscribers", "link_key")
