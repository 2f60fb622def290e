"""Alembic's entry point: Koe runs migrations on a connection it opened (`koe.db.migrate`), inside its
own transaction, so this only hands that connection to Alembic."""

from alembic import context

from koe.db import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
