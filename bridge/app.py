"""The application context: settings, database engines and clock, built once and passed in."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine, select
from sqlmodel import Session

from bridge.addresses import AddressRouter
from bridge.blobs import BlobStore
from bridge.clock import Clock, SystemClock
from bridge.db import check_schema, make_engine, session_scope
from bridge.models import Community, InboxItem
from bridge.settings import Settings
from bridge.tokens import token_checker


@dataclass
class App:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)

    @cached_property
    def engine(self) -> Engine:
        """The writing engine."""
        return make_engine(self.settings.database_url)

    @cached_property
    def reader(self) -> Engine:
        """An engine for read-only work (web view, search) that never waits for writers."""
        if self.engine.dialect.name != "sqlite":
            return self.engine
        return make_engine(self.settings.database_url, reader=True)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.settings.store_dir)

    def raw_mail(self, item: InboxItem) -> bytes:
        """The exact bytes of a received message, from its row or the content store."""
        return item.raw if item.raw is not None else self.blobs.get(item.sha256)

    @cached_property
    def secret(self) -> bytes:
        return self.settings.secret_key()

    def check(self) -> None:
        """Refuse to run on a schema that is not the code's (raises SchemaBehind)."""
        check_schema(self.engine)

    def session(self) -> AbstractContextManager[Session]:
        """One unit of work on the writing engine (committed at the end of the block)."""
        return session_scope(self.engine)

    def community_exists(self, slug: str) -> bool:
        with Session(self.reader) as session:
            table = Community.__table__  # type: ignore[attr-defined]
            return session.execute(
                select(table.c.id).where(table.c.slug == slug)).first() is not None

    def router(self) -> AddressRouter:
        return AddressRouter(self.settings.instance.domains, self.community_exists,
                             token_checker(self.secret))

    def dispose(self) -> None:
        for name in ("engine", "reader"):
            if name in self.__dict__:
                self.__dict__[name].dispose()
