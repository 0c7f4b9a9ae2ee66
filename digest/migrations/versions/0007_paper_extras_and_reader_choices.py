"""What the daily-papers API says about a paper, and the choices a reader makes on the web.

`papers`: the source's one-line TL;DR (`ai_summary`), its keywords, the code repository, a
thumbnail and the authors' organization. Each is optional: a paper without them is shown as
before.

`subscribers` and `signup_requests`: the cadence (daily, or weekly on `send_weekday`, Monday
being 0), and whether paper links go through the click-tracking redirect (off unless the
reader turns it on: privacy by default). A sign-up request also carries the words to exclude
and the trending fallback, so that every choice of the form reaches the profile only when the
address's owner confirms.

Columns added with a server default need no table rebuild on SQLite.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PAPER_COLUMNS = (
    ("ai_summary", sa.Text()),
    ("ai_keywords", sa.JSON()),
    ("github_repo", sa.Text()),
    ("thumbnail", sa.Text()),
    ("organization", sa.String(200)),
)


def _choices() -> list[sa.Column]:
    """The reader's choices, as both tables carry them.

    SQLite cannot add a CHECK constraint to an existing table without rebuilding it (and the
    tables that cascade from it): there the model's enum validation keeps the value right.
    """
    checked = op.get_bind().dialect.name != "sqlite"
    return [
        sa.Column(
            "cadence",
            sa.Enum(
                "daily", "weekly", name="cadence", native_enum=False, create_constraint=checked,
                length=8,
            ),
            nullable=False,
            server_default="daily",
        ),
        sa.Column("send_weekday", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("click_tracking", sa.Boolean(), nullable=False, server_default=sa.false()),
    ]


def upgrade() -> None:
    for name, type_ in PAPER_COLUMNS:
        op.add_column("papers", sa.Column(name, type_, nullable=True))
    for column in _choices():
        op.add_column("subscribers", column)
    for column in _choices():
        op.add_column("signup_requests", column)
    op.add_column(
        "signup_requests", sa.Column("exclude", sa.Text(), nullable=False, server_default="")
    )
    op.add_column(
        "signup_requests",
        sa.Column("trending_fallback", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("signup_requests") as batch:
        for name in ("trending_fallback", "exclude", "click_tracking", "send_weekday", "cadence"):
            batch.drop_column(name)
    with op.batch_alter_table("subscribers") as batch:
        for name in ("click_tracking", "send_weekday", "cadence"):
            batch.drop_column(name)
    with op.batch_alter_table("papers") as batch:
        for name, _ in reversed(PAPER_COLUMNS):
            batch.drop_column(name)
