"""People, their addresses, organisations and memberships: the administrative operations.

These functions take a session and do one thing; the CLI, the command-by-email handler
and the web view all call them, so a member added by CSV and one added by email are the
same member.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from bridge.addresses import RESERVED, SLUG_RE, domain_of, normalise_address
from bridge.models import (
    Address,
    AuditLog,
    Community,
    DeliveryMode,
    Membership,
    Organisation,
    OrganisationDomain,
    Person,
    PersonKind,
    PostingPolicy,
    Role,
    Visibility,
)
from bridge.settings import Settings, parse_domain


class DirectoryError(Exception):
    """An administrative request that cannot be carried out; the message says why."""


def audit(session: Session, action: str, target: str, actor: str = "cli",
          **details: object) -> None:
    session.add(AuditLog(actor=actor, action=action, target=target, details=dict(details)))


# --- communities -----------------------------------------------------------------------------

def check_slug(slug: str) -> str:
    if not re.fullmatch(SLUG_RE, slug) or slug in RESERVED:
        raise DirectoryError(
            f"{slug!r} cannot be a community name: use lower-case letters, digits, '-', '_' "
            f"or '.', and none of {', '.join(sorted(RESERVED))}")
    return slug


def get_community(session: Session, slug: str) -> Community:
    community = session.exec(select(Community).where(Community.slug == slug)).first()
    if community is None:
        raise DirectoryError(f"no community named {slug!r} (see 'causerie community list')")
    return community


def create_community(session: Session, slug: str, name: str, *, policy: str = "members",
                     visibility: str = "internal", language: str = "en",
                     description: str = "", admits_guests: bool = False) -> Community:
    check_slug(slug)
    if session.exec(select(Community).where(Community.slug == slug)).first() is not None:
        raise DirectoryError(f"a community named {slug!r} exists already")
    community = Community(slug=slug, name=name, posting_policy=PostingPolicy(policy).value,
                          visibility=Visibility(visibility).value, language=language,
                          description=description, admits_guests=admits_guests)
    session.add(community)
    session.flush()
    audit(session, "community.create", slug, name=name, policy=policy, visibility=visibility)
    return community


# --- people ----------------------------------------------------------------------------------

def clean_address(email: str) -> str:
    address = normalise_address(email)
    if not address:
        raise DirectoryError(f"{email!r} is not a valid mail address")
    return address


def find_person(session: Session, email: str) -> Person | None:
    address = normalise_address(email)
    if not address:
        return None
    return session.exec(
        select(Person).join(Address).where(Address.email == address)
    ).first()


def organisation_for(session: Session, email: str) -> Organisation | None:
    domain = domain_of(email)
    return session.exec(
        select(Organisation).join(OrganisationDomain).where(OrganisationDomain.domain == domain)
    ).first()


def derived_kind(settings: Settings, email: str) -> str:
    """Staff when the address is in one of `staff_domains` (or a sub-domain), else guest."""
    domain = domain_of(email)
    for staff in settings.instance.staff_domains:
        if domain == staff or domain.endswith("." + staff):
            return PersonKind.STAFF.value
    return PersonKind.GUEST.value


def person_kind(session: Session, settings: Settings, person: Person) -> str:
    if person.kind:
        return person.kind
    address = primary_address(session, person)
    return derived_kind(settings, address) if address else PersonKind.GUEST.value


def primary_address(session: Session, person: Person) -> str:
    addresses = session.exec(
        select(Address).where(Address.person_id == person.id)
        .order_by(col(Address.primary).desc(), col(Address.id))
    ).all()
    return addresses[0].email if addresses else ""


def ensure_person(session: Session, email: str, name: str = "") -> tuple[Person, bool]:
    """The person owning `email`, created (with their organisation, if known) when new."""
    address = clean_address(email)
    person = find_person(session, address)
    if person is not None:
        if name and not person.display_name:
            person.display_name = name
        return person, False
    organisation = organisation_for(session, address)
    person = Person(display_name=name,
                    organisation_id=organisation.id if organisation else None)
    session.add(person)
    session.flush()
    session.add(Address(email=address, person_id=person.id))
    session.flush()
    return person, True


# --- memberships -----------------------------------------------------------------------------

@dataclass
class MemberChange:
    email: str
    action: str  # added, updated, unchanged, removed, error
    detail: str = ""


def get_membership(session: Session, community: Community, person: Person) -> Membership | None:
    return session.exec(select(Membership).where(
        Membership.community_id == community.id, Membership.person_id == person.id)).first()


def add_member(session: Session, community: Community, email: str, *, name: str = "",
               role: str = "member", delivery: str = "each", actor: str = "cli") -> MemberChange:
    """Add or update a member; idempotent (adding the same member twice changes nothing)."""
    role = Role(role).value
    delivery = DeliveryMode(delivery).value
    person, _ = ensure_person(session, email, name)
    address = clean_address(email)
    membership = get_membership(session, community, person)
    if membership is None:
        session.add(Membership(community_id=community.id, person_id=person.id, role=role,
                               delivery_mode=delivery))
        session.flush()
        audit(session, "member.add", f"{community.slug}:{address}", actor, role=role,
              delivery=delivery)
        return MemberChange(address, "added", f"{role}, {delivery}")
    if (membership.role, membership.delivery_mode) == (role, delivery):
        return MemberChange(address, "unchanged")
    changes = f"{membership.role}->{role}, {membership.delivery_mode}->{delivery}"
    membership.role, membership.delivery_mode = role, delivery
    session.add(membership)
    audit(session, "member.update", f"{community.slug}:{address}", actor, changes=changes)
    return MemberChange(address, "updated", changes)


def remove_member(session: Session, community: Community, email: str,
                  actor: str = "cli") -> MemberChange:
    address = clean_address(email)
    person = find_person(session, address)
    membership = get_membership(session, community, person) if person else None
    if membership is None:
        raise DirectoryError(f"{address} is not a member of {community.slug}")
    session.delete(membership)
    audit(session, "member.remove", f"{community.slug}:{address}", actor)
    return MemberChange(address, "removed")


@dataclass
class ImportReport:
    changes: list[MemberChange] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for change in self.changes if change.action == action)


def import_members(session: Session, community: Community, rows: Iterable[list[str]],
                   default_role: str = "member", default_delivery: str = "each") -> ImportReport:
    """CSV rows of `email[,name[,role[,delivery]]]`; a header row is recognised and skipped.

    Each row is applied on its own savepoint, so one bad row is reported and the others
    still land.
    """
    report = ImportReport()
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() in {"email", "e-mail", "address", "mail"}:
            continue
        email = cells[0]
        name = cells[1] if len(cells) > 1 else ""
        role = (cells[2] if len(cells) > 2 and cells[2] else default_role).lower()
        delivery = (cells[3] if len(cells) > 3 and cells[3] else default_delivery).lower()
        try:
            with session.begin_nested():
                if role not in Role._value2member_map_:
                    raise DirectoryError(f"line {number}: unknown role {role!r}")
                if delivery not in DeliveryMode._value2member_map_:
                    raise DirectoryError(f"line {number}: unknown delivery mode {delivery!r}")
                report.changes.append(add_member(session, community, email, name=name,
                                                 role=role, delivery=delivery))
        except DirectoryError as exc:
            report.changes.append(MemberChange(email, "error", str(exc)))
    return report


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# --- organisations ---------------------------------------------------------------------------

def add_organisation(session: Session, name: str, domains: list[str]) -> Organisation:
    organisation = session.exec(select(Organisation).where(Organisation.name == name)).first()
    if organisation is None:
        organisation = Organisation(name=name)
        session.add(organisation)
        session.flush()
    for raw in domains:
        try:
            domain = parse_domain(raw)
        except ValueError:
            raise DirectoryError(f"{raw!r} is not a mail domain") from None
        existing = session.get(OrganisationDomain, domain)
        if existing is not None and existing.organisation_id != organisation.id:
            raise DirectoryError(f"{domain} belongs to another organisation already")
        if existing is None:
            session.add(OrganisationDomain(domain=domain, organisation_id=organisation.id))
    session.flush()
    # People already known at these domains now belong to the organisation.
    for address in session.exec(select(Address)).all():
        if domain_of(address.email) in {d.lower() for d in domains}:
            person = session.get(Person, address.person_id)
            if person is not None and person.organisation_id is None:
                person.organisation_id = organisation.id
                session.add(person)
    audit(session, "org.add", name, domains=domains)
    return organisation
