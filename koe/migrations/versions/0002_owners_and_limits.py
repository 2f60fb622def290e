"""Conversations know the process that records them (so another process marks only orphans ended),
and the limits count admissions and the day's spend in the database, shared by every app server.

The counters start from what the store already holds: the last hour's conversations count as
admissions, and today's recorded cost as today's spend, so an upgrade loosens no limit.

Revision ID: 0002
Revises: 0001
"""

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("conversations", sa.Column("owner", sa.Text))
    op.create_index("conversations_open", "conversations", ["ended_at"])
    op.create_table(
        "store_owners",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("heartbeat_at", sa.Double, nullable=False),
    )
    admissions = op.create_table(
        "admissions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("visitor", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_index("admissions_by_visitor", "admissions", ["visitor", "at"])
    counters = op.create_table(
        "limit_counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("period", sa.Double, primary_key=True),
        sa.Column("value", sa.Double, nullable=False),
    )
    now = datetime.now()
    midnight = datetime(now.year, now.month, now.day).timestamp()  # as koe.limits.start_of_day
    bind = op.get_bind()
    started = bind.execute(sa.text("SELECT visitor, started_at FROM conversations"
                                   " WHERE visitor IS NOT NULL AND started_at >= :since"),
                           {"since": now.timestamp() - 3600}).fetchall()
    if started:
        op.bulk_insert(admissions, [{"visitor": v, "at": at} for v, at in started])
    spent = bind.execute(sa.text("SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE at >= :since"),
                         {"since": midnight}).scalar()
    if spent:
        op.bulk_insert(counters, [{"name": "cost_usd", "period": midnight, "value": spent}])


def downgrade() -> None:
    for table in ("limit_counters", "admissions", "store_owners"):
        op.drop_table(table)
    op.drop_index("conversations_open", "conversations")
    op.drop_column("conversations", "owner")
