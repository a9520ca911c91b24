from alembic import context

from distillery.store.logstore import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    # render_as_batch lets the same migrations alter tables on SQLite.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
