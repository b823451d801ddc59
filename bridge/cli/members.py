"""member: adding, removing, listing, changing and importing the members of a community."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from bridge.cli.output import emit
from bridge.directory import (
    DirectoryError,
    add_member,
    audit,
    clean_address,
    find_person,
    get_community,
    get_membership,
    import_members,
    person_kind,
    primary_address,
    read_csv,
    remove_member,
)
from bridge.models import Community, DeliveryMode, Membership, Organisation, Person, Role
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.cli import Context

ROLES = [r.value for r in Role]
MODES = [m.value for m in DeliveryMode]


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser("member", help="add, remove, list, change and import members",
                            description="Manage the members of a community.")
    sub = p.add_subparsers(dest="member_command", metavar="ACTION", required=True)

    a = sub.add_parser("add", help="add a member (or change an existing one)")
    a.add_argument("slug")
    a.add_argument("email")
    a.add_argument("--name", default="", help="display name")
    a.add_argument("--role", choices=ROLES, default="member")
    a.add_argument("--delivery", choices=MODES, default="each",
                   help="every post by email, a daily or weekly digest, or web only")
    add_json_flag(a)
    a.set_defaults(handler=cmd_add)

    r = sub.add_parser("remove", help="remove a member (their reply addresses stop working)")
    r.add_argument("slug")
    r.add_argument("email")
    r.set_defaults(handler=cmd_remove)

    ls = sub.add_parser("list", help="list members with their bounce scores")
    ls.add_argument("slug")
    add_json_flag(ls)
    ls.set_defaults(handler=cmd_list)

    s = sub.add_parser("set", help="change a member's role, delivery mode or state")
    s.add_argument("slug")
    s.add_argument("email")
    s.add_argument("--role", choices=ROLES)
    s.add_argument("--delivery", choices=MODES)
    s.add_argument("--name", help="display name")
    s.add_argument("--enable", action="store_true",
                   help="re-enable delivery disabled by bounces (resets the score)")
    s.add_argument("--own-copies", choices=["yes", "no"],
                   help="receive a copy of one's own posts")
    s.add_argument("--duplicate-copies", choices=["yes", "no"],
                   help="receive a copy even when already in the original's To/Cc")
    add_json_flag(s)
    s.set_defaults(handler=cmd_set)

    i = sub.add_parser("import", help="import members from CSV (email,name,role,delivery)",
                       description="Import members from a CSV file ('-' for standard input) "
                                   "with columns email, name, role, delivery; a header line "
                                   "is optional. Idempotent: importing twice changes nothing.")
    i.add_argument("slug")
    i.add_argument("file", help="CSV file, or - for standard input")
    add_json_flag(i)
    i.set_defaults(handler=cmd_import)


def member_record(session: Session, settings: Settings, membership: Membership
                  ) -> dict[str, Any]:
    person = session.get(Person, membership.person_id)
    assert person is not None
    organisation = (session.get(Organisation, person.organisation_id)
                    if person.organisation_id else None)
    return {
        "email": primary_address(session, person), "name": person.display_name,
        "role": membership.role, "delivery": membership.delivery_mode,
        "kind": person_kind(session, settings, person),
        "organisation": organisation.name if organisation else None,
        "bounce_score": round(membership.bounce_score, 2),
        "disabled_reason": membership.disabled_reason or None,
        "joined_at": membership.joined_at,
    }


def cmd_add(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = get_community(session, args.slug)
        change = add_member(session, community, args.email, name=args.name, role=args.role,
                            delivery=args.delivery)
    if args.json:
        emit({"email": change.email, "action": change.action, "detail": change.detail}, True)
    else:
        print(f"{change.email}: {change.action}" + (f" ({change.detail})" if change.detail else ""))
    return 0


def cmd_remove(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        change = remove_member(session, get_community(session, args.slug), args.email)
    print(f"{change.email}: removed from {args.slug}")
    return 0


def cmd_list(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = get_community(session, args.slug)
        memberships = session.exec(select(Membership).where(
            Membership.community_id == community.id).order_by(col(Membership.id))).all()
        rows = [member_record(session, app.settings, m) for m in memberships]
    emit(rows, args.json, ["email", "name", "role", "delivery", "kind", "bounce_score",
                           "disabled_reason"])
    return 0


def _membership(session: Session, community: Community, email: str) -> Membership:
    address = clean_address(email)
    person = find_person(session, address)
    membership = get_membership(session, community, person) if person else None
    if membership is None:
        raise DirectoryError(f"{address} is not a member of {community.slug}")
    return membership


def cmd_set(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = get_community(session, args.slug)
        membership = _membership(session, community, args.email)
        person = session.get(Person, membership.person_id)
        assert person is not None
        changes: dict[str, Any] = {}
        if args.role:
            membership.role = changes["role"] = args.role
        if args.delivery:
            membership.delivery_mode = changes["delivery"] = args.delivery
        if args.enable:
            membership.disabled_reason = ""
            membership.bounce_score = 0.0
            changes["enabled"] = True
        if args.duplicate_copies:
            membership.duplicate_copies = changes["duplicate_copies"] = (
                args.duplicate_copies == "yes")
        if args.name is not None:
            person.display_name = changes["name"] = args.name
        if args.own_copies:
            person.own_copies = changes["own_copies"] = args.own_copies == "yes"
        if not changes:
            raise DirectoryError("nothing to change: give --role, --delivery, --name, "
                                 "--enable, --own-copies or --duplicate-copies")
        session.add(membership)
        session.add(person)
        audit(session, "member.set", f"{args.slug}:{args.email}", **changes)
        record = member_record(session, app.settings, membership)
    if args.json:
        emit(record, True)
    else:
        print(f"{record['email']}: updated ({', '.join(changes)})")
    return 0


def cmd_import(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise DirectoryError(f"cannot read {args.file}: {exc.strerror}") from None
    with app.session() as session:
        community = get_community(session, args.slug)
        report = import_members(session, community, read_csv(text))
    if args.json:
        emit([{"email": c.email, "action": c.action, "detail": c.detail}
              for c in report.changes], True)
    else:
        for change in report.changes:
            if change.action != "unchanged":
                print(f"{change.email}: {change.action}"
                      + (f" ({change.detail})" if change.detail else ""))
        print(f"{report.count('added')} added, {report.count('updated')} updated, "
              f"{report.count('unchanged')} unchanged, {report.count('error')} errors")
    return 1 if report.count("error") else 0
