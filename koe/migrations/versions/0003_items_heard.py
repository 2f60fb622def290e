"""Transcript rows of a reply cut off mid-way know how much of their text was heard (`items.heard`:
characters played; NULL for every row before this and every reply heard whole).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("heard", sa.Integer))


def downgrade() -> None:
    op.drop_column("items", "heard")
