"""Who sent a message, in SQLAlchemy Core (the processor's hot path): person, membership,
staff or guest. The administrative, ORM versions of these live in `bridge.directory`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from bridge.addresses import domain_of
from bridge.models import Address, Membership, OrganisationDomain, Person
from bridge.settings import Settings

_address = Address.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_membership = Membership.__table__  # type: ignore[attr-defined]
_orgdomain = OrganisationDomain.__table__  # type: ignore[attr-defined]
_ORGANISATION = select(_orgdomain.c.organisation_id).where(
    _orgdomain.c.domain == bindparam("domain"))


@dataclass(frozen=True)
class Sender:
    person_id: int | None
    address: str
    kind: str                 # staff or guest
    language: str


@dataclass(frozen=True)
class MemberInfo:
    role: str
    delivery_mode: str


def is_staff_address(settings: Settings, address: str) -> bool:
    domain = domain_of(address)
    return any(domain == d or domain.endswith("." + d) for d in settings.instance.staff_domains)


def find_sender(connection: Connection, settings: Settings, address: str) -> Sender:
    row = connection.execute(
        select(_person.c.id, _person.c.kind, _person.c.language)
        .join(_address, _address.c.person_id == _person.c.id)
        .where(_address.c.email == address)).first()
    staff = is_staff_address(settings, address)
    if row is None:
        return Sender(None, address, "staff" if staff else "guest", "")
    kind = row.kind or ("staff" if staff else "guest")
    return Sender(int(row.id), address, kind, row.language or "")


def organisation_of(connection: Connection, domain: str) -> int | None:
    """The organisation that owns `domain` (one of its organisation domains), if any."""
    found = connection.execute(_ORGANISATION, {"domain": domain}).scalar()
    return None if found is None else int(found)


def person_row(name: str, organisation_id: int | None, now: datetime) -> dict[str, Any]:
    """The row of a person met for the first time as the author of a message (the processor
    adds it, and the address, with its batch: `inbound.batch.Batch.person`)."""
    return {"display_name": name[:200], "language": "", "timezone": "", "kind": None,
            "organisation_id": organisation_id, "digest_time": "", "digest_weekday": "",
            "own_copies": False, "created_at": now}


def person_addresses(connection: Connection, person_id: int) -> set[str]:
    return set(connection.execute(select(_address.c.email).where(
        _address.c.person_id == person_id)).scalars())
