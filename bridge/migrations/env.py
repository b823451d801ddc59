"""Alembic environment: runs on the engine the caller put in `config.attributes`."""

from alembic import context
from sqlmodel import SQLModel

import bridge.models  # noqa: F401  (registers the tables on SQLModel.metadata)

# Objects the search migration (0002) creates by hand, which the models do not describe:
# autogenerate must not offer to drop them.
_SEARCH_OBJECTS = ("message_search", "search_vector", "ix_message_search")


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    return not (name or "").startswith(_SEARCH_OBJECTS)


config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
