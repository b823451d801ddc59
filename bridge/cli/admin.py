"""init, serve, check-config and db: setting an instance up and running it."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from sqlmodel import select

from bridge import db
from bridge.cli.output import print_json, print_record
from bridge.directory import add_member, create_community
from bridge.models import Community
from bridge.settings import masked

if TYPE_CHECKING:
    from bridge.cli import Context

DEMO_SLUG = "demo"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser("init", help="create the data directory, secret and database",
                            description="Create the data directory, the instance secret and "
                                        "the database (or bring its schema up to date). "
                                        "Safe to run again.")
    p.add_argument("--demo", action="store_true",
                   help="also add a demo community with two members")
    p.set_defaults(handler=cmd_init)

    p = commands.add_parser("serve", help="run the service until SIGTERM/SIGINT",
                            description="Run the SMTP/LMTP gateway, IMAP pollers, processor, "
                                        "sender, digest scheduler and web view in one process.")
    p.set_defaults(handler=cmd_serve)

    p = commands.add_parser("check-config", help="validate and print the effective settings",
                            description="Validate the settings and print them, secrets masked. "
                                        "Exit status 2 when a setting is wrong.")
    add_json_flag(p)
    p.set_defaults(handler=cmd_check_config)

    p = commands.add_parser("db", help="database schema: upgrade, status",
                            description="Manage the database schema (Alembic migrations).")
    sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = sub.add_parser("upgrade", help="apply the migrations up to the code's revision")
    up.set_defaults(handler=cmd_db_upgrade)
    st = sub.add_parser("status", help="show the database's and the code's revisions")
    add_json_flag(st)
    st.set_defaults(handler=cmd_db_status)


def cmd_init(args: argparse.Namespace, context: Context) -> int:
    settings = context.settings
    settings.instance.data_dir.mkdir(parents=True, exist_ok=True)
    settings.outbox_dir.mkdir(parents=True, exist_ok=True)
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    app = context.app(check_schema=False)
    _ = app.secret
    db.upgrade(app.engine)
    print(f"data directory: {settings.instance.data_dir}")
    print(f"database: {db.current_revision(app.engine)} ({app.engine.url.render_as_string()})")
    if args.demo:
        with app.session() as session:
            if session.exec(select(Community).where(Community.slug == DEMO_SLUG)).first():
                print(f"demo community {DEMO_SLUG!r} exists already")
                return 0
            community = create_community(session, DEMO_SLUG, "Demo community",
                                         policy="members", visibility="public",
                                         description="A first community to try Causerie.")
            staff = (settings.instance.staff_domains or settings.instance.domains)[0]
            add_member(session, community, f"alice@{staff}", name="Alice Martin", role="owner")
            add_member(session, community, f"bob@{staff}", name="Bob Durand")
        address = app.router().posting_address(DEMO_SLUG)
        print(f"demo community {DEMO_SLUG!r} created: post to {address} "
              f"(members alice@{staff}, bob@{staff})")
    return 0


def cmd_serve(args: argparse.Namespace, context: Context) -> int:
    from bridge import serve

    app = context.app()
    asyncio.run(serve.run(app))
    return 0


def cmd_check_config(args: argparse.Namespace, context: Context) -> int:
    data = masked(context.settings)
    if args.json:
        print_json(data)
    else:
        print(f"settings file: {context.settings.source or '(none: built-in defaults)'}")
        for section, values in data.items():
            if isinstance(values, dict):
                print(f"[{section}]")
                print_record(values)
            elif section == "imap":
                for box in values:
                    print("[[imap.mailbox]]")
                    print_record(box)
        print("settings are valid")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, context: Context) -> int:
    app = context.app(check_schema=False)
    before = db.current_revision(app.engine)
    db.upgrade(app.engine)
    print(f"database upgraded: {before or 'empty'} -> {db.current_revision(app.engine)}")
    return 0


def cmd_db_status(args: argparse.Namespace, context: Context) -> int:
    app = context.app(check_schema=False)
    data = {"current": db.current_revision(app.engine), "head": db.head_revision()}
    data["up_to_date"] = data["current"] == data["head"]
    if args.json:
        print_json(data)
    else:
        print_record(data)
    return 0
