"""A delivery item's only foreign key is its delivery.

`delivery_items` gains a million rows a day at 100,000 subscribers, and each row's three
foreign keys were three lookups on insert (on PostgreSQL, three trigger queries per row: a
batch's thousand rows took 27 ms, 12 ms without them). Two of them guard nothing the
delivery key does not:
- `subscriber_id` is the delivery's own subscriber (the column is there for the
  never-twice unique index). Deleting a subscriber deletes their deliveries, and with them,
  through `delivery_id`, their items.
- `paper_id` names a paper of the day's index, read from `papers`; retention deletes only
  papers no delivery item names. Without the key, deleting a paper no longer scans
  `delivery_items` for it, which has no index by paper alone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# SQLite keeps the keys unnamed: batch mode names them on reflection by this convention.
_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_DROPPED = (("subscriber_id", "subscribers"), ("paper_id", "papers"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for key in sa.inspect(bind).get_foreign_keys("delivery_items"):
            if key["name"] and key["constrained_columns"] in (["subscriber_id"], ["paper_id"]):
                op.drop_constraint(key["name"], "delivery_items", type_="foreignkey")
        return
    with op.batch_alter_table("delivery_items", naming_convention=_NAMES) as batch:
        for column, table in _DROPPED:
            batch.drop_constraint(f"fk_delivery_items_{column}_{table}", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("delivery_items", naming_convention=_NAMES) as batch:
        for column, table in _DROPPED:
            batch.create_foreign_key(
                f"fk_delivery_items_{column}_{table}", table, [column], ["id"],
                ondelete="CASCADE",
            )
