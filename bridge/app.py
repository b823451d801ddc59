"""The application context: settings, database engines and clock, built once and passed in."""

from __future__ import annotations

import time
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

SLUG_CACHE_SECONDS = 5.0


@dataclass
class App:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    _known_slugs: dict[str, float] = field(default_factory=dict, repr=False)

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
        """Whether `slug` is a community; positive answers are cached for a few seconds,
        since every RCPT asks (a community deleted meanwhile is caught by the processor)."""
        now = time.monotonic()
        if self._known_slugs.get(slug, 0.0) > now:
            return True
        with Session(self.reader) as session:
            table = Community.__table__  # type: ignore[attr-defined]
            found = session.execute(
                select(table.c.id).where(table.c.slug == slug)).first() is not None
        if found:
            self._known_slugs[slug] = now + SLUG_CACHE_SECONDS
        return found

    def knows_community(self, slug: str) -> bool:
        """True when `community_exists(slug)` would answer from its cache."""
        return self._known_slugs.get(slug, 0.0) > time.monotonic()

    def router(self) -> AddressRouter:
        return AddressRouter(self.settings.instance.domains, self.community_exists,
                             token_checker(self.secret), self.knows_community)

    def dispose(self) -> None:
        for name in ("engine", "reader"):
            if name in self.__dict__:
                self.__dict__[name].dispose()
