"""`causerie`: the administrator's command line.

Each command group lives in its own module with a `register(subparsers)` function; the
groups are listed once, below. A handler receives the parsed arguments and a `Context` that
opens the settings and the database only when the command needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge.app import App
from bridge.db import SchemaBehind
from bridge.directory import DirectoryError
from bridge.settings import Settings, SettingsError


class CommandError(Exception):
    """A command that cannot do what was asked; printed as one line, exit status 1."""


class Context:
    """What a command handler gets: the global options, and the app opened on demand."""

    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._app: App | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load(self.config)
        return self._settings

    def app(self, check_schema: bool = True) -> App:
        if self._app is None:
            self._app = App(self.settings)
            if check_schema:
                self._app.check()
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.dispose()


Handler = Callable[[argparse.Namespace, Context], int | None]


def build_parser() -> argparse.ArgumentParser:
    from bridge.cli import admin, archive, communities, imap, inbox, members, outbound, search

    parser = argparse.ArgumentParser(
        prog="causerie",
        description="Causerie: team mail becomes archived, searchable community "
                    "conversations. Run 'causerie COMMAND --help' for each command.",
    )
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="settings file (default: $CAUSERIE_CONFIG, else ./settings.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from bridge.cli import digest

    for module in (admin, communities, members, inbox, outbound, imap, search, archive,
                   digest):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = logging.DEBUG if args.verbose else logging.WARNING
    for name in ("alembic", "mail.log"):  # per-command chatter of Alembic and aiosmtpd
        logging.getLogger(name).setLevel(quiet)
    context = Context(args.config)
    handler: Handler = args.handler
    try:
        return handler(args, context) or 0
    except SettingsError as exc:
        print(f"causerie: {exc}", file=sys.stderr)
        return 2
    except SchemaBehind as exc:
        print(f"causerie: {exc}", file=sys.stderr)
        return 2
    except (DirectoryError, CommandError) as exc:
        print(f"causerie: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    finally:
        context.close()


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
