"""The session store as it was before Alembic: conversations, events, items, usage.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite numbers rows only with INTEGER


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double),
        sa.Column("end_reason", sa.Text),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("dialect", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("visitor", sa.Text),
        sa.Column("title", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("conversations_by_start", "conversations", ["started_at"])
    op.create_table(
        "events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("events_by_conversation", "events", ["conversation_id", "id"])
    op.create_table(
        "items",
        sa.Column("conversation_id", sa.Text, primary_key=True),
        sa.Column("item_id", sa.Text, primary_key=True),
        sa.Column("previous_item_id", sa.Text),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("final", sa.Integer, nullable=False),
        sa.Column("interrupted", sa.Integer, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("conversation_id", sa.Text, primary_key=True),
        sa.Column("response_id", sa.Text, primary_key=True),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in (
            "input_text_tokens", "input_audio_tokens", "cached_text_tokens", "cached_audio_tokens",
            "output_text_tokens", "output_audio_tokens")),
        sa.Column("cost_usd", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in ("usage", "items", "events", "conversations"):
        op.drop_table(table)
