"""community and org: creating and changing communities and organisations."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, func, select

from bridge.cli.output import emit
from bridge.directory import (
    DirectoryError,
    add_organisation,
    audit,
    create_community,
    get_community,
)
from bridge.models import (
    Community,
    Conversation,
    Membership,
    Organisation,
    OrganisationDomain,
    PostingPolicy,
    Visibility,
)

if TYPE_CHECKING:
    from bridge.cli import Context

POLICIES = [p.value for p in PostingPolicy]
VISIBILITIES = [v.value for v in Visibility]
SETTABLE = ("name", "description", "language", "policy", "visibility", "guests", "tag",
            "reply_to", "goals")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser("community", help="create, list, show, change and delete communities",
                            description="Manage communities.")
    sub = p.add_subparsers(dest="community_command", metavar="ACTION", required=True)

    c = sub.add_parser("create", help="create a community",
                       description="Create a community; its posting address is SLUG@<first "
                                   "domain>.")
    c.add_argument("slug", help="short name, also the local part of the posting address")
    c.add_argument("--name", required=True, help="display name")
    c.add_argument("--description", default="")
    c.add_argument("--language", default="en", help="language of the community (en, fr, ...)")
    c.add_argument("--policy", choices=POLICIES, default="members",
                   help="who may post: anyone (open), members, or every post moderated")
    c.add_argument("--visibility", choices=VISIBILITIES, default="internal",
                   help="who may read: anyone, signed-in staff, or members only")
    c.add_argument("--guests", action="store_true",
                   help="admit guests (addresses outside staff_domains)")
    add_json_flag(c)
    c.set_defaults(handler=cmd_create)

    ls = sub.add_parser("list", help="list communities")
    add_json_flag(ls)
    ls.set_defaults(handler=cmd_list)

    sh = sub.add_parser("show", help="show one community")
    sh.add_argument("slug")
    add_json_flag(sh)
    sh.set_defaults(handler=cmd_show)

    st = sub.add_parser("set", help="change a community's settings",
                        description="Change settings: KEY=VALUE pairs with KEY one of "
                                    + ", ".join(SETTABLE)
                                    + " (goals takes a JSON object, e.g. "
                                      "'{\"answered_within_48h\": 0.8}').")
    st.add_argument("slug")
    st.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    add_json_flag(st)
    st.set_defaults(handler=cmd_set)

    from bridge.cli.digest import register_stats

    register_stats(sub)

    d = sub.add_parser("delete", help="delete a community and its archive",
                       description="Delete a community with its conversations and "
                                   "memberships. The raw mail stays in the inbox.")
    d.add_argument("slug")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    d.set_defaults(handler=cmd_delete)

    p = commands.add_parser("org", help="organisations of guests: add, list",
                            description="Organisations group guests by the company they "
                                        "come from, by mail domain.")
    sub = p.add_subparsers(dest="org_command", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="add an organisation (or more domains to one)")
    a.add_argument("name")
    a.add_argument("--domain", action="append", required=True, dest="domains",
                   help="a mail domain of the organisation (repeatable)")
    add_json_flag(a)
    a.set_defaults(handler=cmd_org_add)
    ls = sub.add_parser("list", help="list organisations")
    add_json_flag(ls)
    ls.set_defaults(handler=cmd_org_list)


def community_record(session: Session, community: Community, posting_address: str
                     ) -> dict[str, Any]:
    members = session.exec(select(func.count()).select_from(Membership)
                           .where(Membership.community_id == community.id)).one()
    conversations = session.exec(select(func.count()).select_from(Conversation)
                                 .where(Conversation.community_id == community.id)).one()
    return {
        "slug": community.slug, "name": community.name, "description": community.description,
        "address": posting_address, "language": community.language,
        "visibility": community.visibility, "policy": community.posting_policy,
        "guests": community.admits_guests, "tag": community.subject_tag,
        "reply_to": community.reply_to, "goals": community.goals,
        "members": members, "conversations": conversations,
        "created_at": community.created_at,
    }


def cmd_create(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = create_community(session, args.slug, args.name, policy=args.policy,
                                     visibility=args.visibility, language=args.language,
                                     description=args.description, admits_guests=args.guests)
        record = community_record(session, community, app.router().posting_address(args.slug))
    if args.json:
        emit(record, True)
    else:
        print(f"community {args.slug!r} created; posting address {record['address']}")
    return 0


def cmd_list(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    router = app.router()
    with app.session() as session:
        rows = [community_record(session, c, router.posting_address(c.slug))
                for c in session.exec(select(Community).order_by(col(Community.slug))).all()]
    emit(rows, args.json, ["slug", "name", "address", "visibility", "policy", "members",
                           "conversations"])
    return 0


def cmd_show(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = get_community(session, args.slug)
        emit(community_record(session, community, app.router().posting_address(args.slug)),
             args.json)
    return 0


def _apply(community: Community, key: str, value: str) -> None:
    if key == "name":
        community.name = value
    elif key == "description":
        community.description = value
    elif key == "language":
        community.language = value
    elif key == "policy":
        if value not in POLICIES:
            raise DirectoryError(f"policy must be one of {', '.join(POLICIES)}")
        community.posting_policy = value
    elif key == "visibility":
        if value not in VISIBILITIES:
            raise DirectoryError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        community.visibility = value
    elif key == "guests":
        if value.lower() not in {"true", "false", "yes", "no"}:
            raise DirectoryError("guests must be true or false")
        community.admits_guests = value.lower() in {"true", "yes"}
    elif key == "tag":
        community.subject_tag = value
    elif key == "reply_to":
        if value not in {"personal", "community"}:
            raise DirectoryError("reply_to must be 'personal' or 'community'")
        community.reply_to = value
    elif key == "goals":
        try:
            goals = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DirectoryError(f"goals must be a JSON object ({exc})") from None
        if not isinstance(goals, dict):
            raise DirectoryError("goals must be a JSON object")
        community.goals = goals
    else:
        raise DirectoryError(f"unknown setting {key!r}: one of {', '.join(SETTABLE)}")


def cmd_set(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = get_community(session, args.slug)
        for pair in args.pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise DirectoryError(f"{pair!r}: expected KEY=VALUE")
            _apply(community, key.strip(), value)
        session.add(community)
        audit(session, "community.set", args.slug, changes=args.pairs)
        record = community_record(session, community, app.router().posting_address(args.slug))
    if args.json:
        emit(record, True)
    else:
        print(f"community {args.slug!r} updated")
    return 0


def cmd_delete(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    if not args.yes:
        answer = input(f"Delete community {args.slug!r} and its archive? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing deleted")
            return 1
    with app.session() as session:
        community = get_community(session, args.slug)
        session.delete(community)
        audit(session, "community.delete", args.slug)
    print(f"community {args.slug!r} deleted")
    return 0


def cmd_org_add(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        organisation = add_organisation(session, args.name, args.domains)
        domains = session.exec(select(OrganisationDomain.domain).where(
            OrganisationDomain.organisation_id == organisation.id)).all()
        record = {"name": organisation.name, "domains": sorted(domains)}
    if args.json:
        emit(record, True)
    else:
        print(f"organisation {args.name!r}: {', '.join(record['domains'])}")
    return 0


def cmd_org_list(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        rows = []
        for organisation in session.exec(select(Organisation).order_by(col(Organisation.name))):
            domains = session.exec(select(OrganisationDomain.domain).where(
                OrganisationDomain.organisation_id == organisation.id)).all()
            rows.append({"name": organisation.name, "domains": sorted(domains)})
    emit(rows, args.json, ["name", "domains"])
    return 0
