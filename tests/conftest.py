"""Shared fixtures: settings and a database for each test, on SQLite and on PostgreSQL.

Every test that takes `app` (or `settings`, `db_url`) runs twice: on a fresh SQLite file,
and on a PostgreSQL database created for this test run on the server at 127.0.0.1:5432
(dropped at the end; its tables emptied after each test). When PostgreSQL cannot be reached
the PostgreSQL half is skipped, with the reason shown in the summary (`-ra`).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

from bridge.app import App
from bridge.db import make_engine, upgrade
from bridge.settings import Settings

PG_ADMIN_URL = os.environ.get("CAUSERIE_TEST_PG",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"

DOMAIN = "lists.example.org"
STAFF_DOMAIN = "example.com"


def free_port() -> int:
    """A free TCP port on loopback (bind the socket ourselves: no fixed test ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test (migrating each time is slow)."""
    path = tmp_path_factory.mktemp("template") / "causerie.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this test run, migrated to head."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    name = f"causerie_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _empty_pg(url: str) -> None:
    import bridge.models  # noqa: F401

    engine = create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "var" / "causerie.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("pg_url")
    try:
        yield url
    finally:
        _empty_pg(url)


def write_settings(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f"""
[instance]
name = "Test Causerie"
domains = ["{DOMAIN}"]
staff_domains = ["{STAFF_DOMAIN}"]
base_url = "https://causerie.example.com"
data_dir = "var"

[database]
url = "{db_url}"
{extra}
""", encoding="utf-8")
    return path


@pytest.fixture
def settings_path(tmp_path: Path, db_url: str) -> Path:
    return write_settings(tmp_path, db_url)


@pytest.fixture
def settings(settings_path: Path) -> Settings:
    return Settings.load(settings_path, environ={})


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    application = App(settings)
    yield application
    application.dispose()
