"""The whole schema, in one place.

SQLModel classes define the tables and serve the CLI, the web view and everything that is
not per-message. Hot paths (accepting, processing, fanning out) use SQLAlchemy Core on the
same tables (`Model.__table__`), in batches.

All datetimes are timezone-aware UTC; enumerations are stored as their plain string values.
Every table a retry could write twice carries the unique key that turns the second write
into a no-op (DESIGN.md, "Storage").
"""

from __future__ import annotations

import zlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Dialect, Index, LargeBinary, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from bridge.clock import utcnow


class Visibility(StrEnum):
    PUBLIC = "public"      # anyone, signed in or not
    INTERNAL = "internal"  # any signed-in staff member
    PRIVATE = "private"    # members only


class PostingPolicy(StrEnum):
    OPEN = "open"            # anyone may post
    MEMBERS = "members"      # members post; others are held
    MODERATED = "moderated"  # every post is held for a moderator


class Role(StrEnum):
    OWNER = "owner"
    MODERATOR = "moderator"
    MEMBER = "member"
    GUEST = "guest"
    READONLY = "readonly"


class DeliveryMode(StrEnum):
    EACH = "each"
    DAILY = "daily"
    WEEKLY = "weekly"
    NONE = "none"


class PersonKind(StrEnum):
    STAFF = "staff"
    GUEST = "guest"


class InboxStatus(StrEnum):
    PENDING = "pending"        # accepted, waiting for the processor
    DONE = "done"              # processed (posted, or handled as bounce/command/...)
    HELD = "held"              # waiting for a moderator (see `Held`)
    REJECTED = "rejected"      # refused after acceptance, with a reason
    DISCARDED = "discarded"    # auto-reply, loop, duplicate: recorded, never posted
    FAILED = "failed"          # a step raised; retried with backoff up to max_attempts


class MessageStatus(StrEnum):
    PUBLISHED = "published"
    REDACTED = "redacted"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


# How `InboxItem.raw` is stored: one tag byte, then the bytes (see `RawMail`).
RAW_PLAIN = b"R"
RAW_ZLIB = b"Z"
RAW_ZLIB_LEVEL = 6


def pack_raw(raw: bytes) -> bytes:
    """The stored form of raw mail: zlib-compressed when that saves space, else as it is,
    behind a tag byte that says which (so no reader has to guess from the content)."""
    packed = zlib.compress(raw, RAW_ZLIB_LEVEL)
    if len(packed) < len(raw):
        return RAW_ZLIB + packed
    return RAW_PLAIN + raw


def unpack_raw(stored: bytes) -> bytes:
    """The exact bytes `pack_raw` was given."""
    tag, body = stored[:1], stored[1:]
    if tag == RAW_ZLIB:
        return zlib.decompress(body)
    if tag == RAW_PLAIN:
        return body
    raise ValueError(f"raw mail stored with an unknown tag {tag!r}")


class RawMail(TypeDecorator[bytes]):
    """Raw mail, compressed in the database and given back byte for byte.

    The raw bytes were the largest part of the database (about 2.4 KB a message of mostly
    headers, about half of it saved by zlib). Compressing in the column type rather than in
    each writer and reader means every path — the processor, the web raw view, the mbox
    export, erasure, the CLI — reads and writes plain bytes as before; migration 0004 packs
    the rows written before it.
    """

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else pack_raw(bytes(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else unpack_raw(bytes(value))


class Community(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(unique=True, max_length=64)
    name: str
    description: str = ""
    language: str = "en"
    visibility: str = Visibility.INTERNAL.value
    posting_policy: str = PostingPolicy.MEMBERS.value
    admits_guests: bool = False
    subject_tag: str = ""
    # "personal": Reply-To is the recipient's reply+TOKEN address; "community": the list address.
    reply_to: str = "personal"
    goals: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Organisation(SQLModel, table=True):
    """A customer or partner company, so guests are grouped by where they come from."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class OrganisationDomain(SQLModel, table=True):
    domain: str = Field(primary_key=True)
    organisation_id: int = Field(foreign_key="organisation.id", ondelete="CASCADE", index=True)


class Person(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    display_name: str = ""
    language: str = ""          # empty: the instance default
    timezone: str = ""          # empty: the instance default
    # Set explicitly, or None: derived from staff_domains and organisation domains.
    kind: str | None = None
    organisation_id: int | None = Field(default=None, foreign_key="organisation.id",
                                        ondelete="SET NULL")
    digest_time: str = ""       # "HH:MM" local; empty: the instance default
    digest_weekday: str = ""    # "monday"...; empty: the instance default
    own_copies: bool = False    # receive a copy of one's own posts
    forgotten_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Address(SQLModel, table=True):
    """One email address of a person; a person may have several. Stored lower-cased."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)
    person_id: int = Field(foreign_key="person.id", ondelete="CASCADE", index=True)
    primary: bool = True


class Membership(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("community_id", "person_id"),)

    id: int | None = Field(default=None, primary_key=True)
    community_id: int = Field(foreign_key="community.id", ondelete="CASCADE", index=True)
    person_id: int = Field(foreign_key="person.id", ondelete="CASCADE", index=True)
    role: str = Role.MEMBER.value
    delivery_mode: str = DeliveryMode.EACH.value
    # Copy even when the member was already in the original's To/Cc.
    duplicate_copies: bool = False
    bounce_score: float = 0.0
    bounce_updated_at: datetime | None = None
    disabled_reason: str = ""
    joined_at: datetime = Field(default_factory=utcnow)


class InboxItem(SQLModel, table=True):
    """Raw mail as received, with its envelope: the source of truth.

    Small messages keep their bytes in `raw` (compressed in the database by `RawMail`,
    transparently); larger ones live in the content store under `sha256` (written and
    fsynced before this row is committed).
    """

    __table_args__ = (Index("ix_inboxitem_status_next", "status", "next_attempt_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow)
    source: str = "smtp"        # smtp, lmtp, imap, import, cli
    peer: str = ""
    helo: str = ""
    mail_from: str = ""
    rcpt_to: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    size: int = 0
    sha256: str = Field(index=True, max_length=64)
    raw: bytes | None = Field(default=None, sa_column=Column(RawMail, nullable=True))
    header_message_id: str = Field(default="", index=True)
    status: str = InboxStatus.PENDING.value
    kind: str = ""              # what the processor found: post, reply, bounce, auto_reply, ...
    reason: str = ""
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    processed_at: datetime | None = None


class Conversation(SQLModel, table=True):
    __table_args__ = (Index("ix_conversation_community_activity", "community_id",
                            "last_activity"),
                      Index("ix_conversation_subject", "community_id", "normalized_subject"))

    id: int | None = Field(default=None, primary_key=True)
    community_id: int = Field(foreign_key="community.id", ondelete="CASCADE")
    subject: str = ""
    normalized_subject: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    last_activity: datetime = Field(default_factory=utcnow)
    message_count: int = 0
    author_id: int | None = Field(default=None, foreign_key="person.id", ondelete="SET NULL")
    first_reply_at: datetime | None = None


class Message(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("community_id", "message_id"),
                      Index("ix_message_conversation_date", "conversation_id", "date"))

    id: int | None = Field(default=None, primary_key=True)
    community_id: int = Field(foreign_key="community.id", ondelete="CASCADE")
    conversation_id: int = Field(foreign_key="conversation.id", ondelete="CASCADE")
    message_id: str = Field(index=True)               # without angle brackets
    parent_id: int | None = Field(default=None, foreign_key="message.id", ondelete="SET NULL")
    in_reply_to: str = Field(default="", index=True)
    references: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    author_id: int | None = Field(default=None, foreign_key="person.id", ondelete="SET NULL",
                                  index=True)
    from_address: str = ""
    from_name: str = ""
    date: datetime = Field(default_factory=utcnow)
    received_at: datetime = Field(default_factory=utcnow)
    subject: str = ""
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    quoted: str = Field(default="", sa_column=Column(Text, nullable=False))
    signature: str = Field(default="", sa_column=Column(Text, nullable=False))
    html: str = Field(default="", sa_column=Column(Text, nullable=False))
    language: str = ""
    to_cc: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    inbox_id: int | None = Field(default=None, foreign_key="inboxitem.id", ondelete="SET NULL",
                                 index=True)
    status: str = MessageStatus.PUBLISHED.value
    has_attachments: bool = False
    security: str = ""          # "signed" or "encrypted" (S/MIME, PGP)
    redacted_reason: str = ""
    redacted_at: datetime | None = None


class Attachment(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("message_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", ondelete="CASCADE", index=True)
    position: int = 0
    filename: str = ""
    content_type: str = "application/octet-stream"
    size: int = 0
    sha256: str = Field(max_length=64, index=True)
    inline: bool = False
    content_id: str = ""


class Held(SQLModel, table=True):
    """A message waiting for a moderator's decision in one community."""

    __table_args__ = (UniqueConstraint("inbox_id", "community_id"),)

    id: int | None = Field(default=None, primary_key=True)
    inbox_id: int = Field(foreign_key="inboxitem.id", ondelete="CASCADE")
    community_id: int = Field(foreign_key="community.id", ondelete="CASCADE", index=True)
    sender: str = ""
    subject: str = ""
    reason: str = ""
    # A stable code for the reason: "confirm_external" lets the sender decide (a reply-all
    # that would bring the community into a conversation with people outside the company).
    code: str = ""
    status: str = "pending"     # pending, approved, rejected
    decided_by: str = ""
    decided_at: datetime | None = None
    decision_note: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Mute(SQLModel, table=True):
    person_id: int = Field(foreign_key="person.id", ondelete="CASCADE", primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id", ondelete="CASCADE",
                                 primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)


class Delivery(SQLModel, table=True):
    """One email to send to one recipient.

    `dedupe_key` makes every kind idempotent: `post:<message>:<person>`,
    `notice:<address>:<reason>:<day>`, `digest:<run>`, ...
    Posts are composed at send time from the stored message; notices and digests carry
    their composed bytes in `raw`.
    """

    __table_args__ = (Index("ix_delivery_status_next", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(unique=True)
    kind: str = "post"          # post, notice, digest, command, moderation
    message_id: int | None = Field(default=None, foreign_key="message.id", ondelete="CASCADE",
                                   index=True)
    community_id: int | None = Field(default=None, foreign_key="community.id",
                                     ondelete="CASCADE")
    person_id: int | None = Field(default=None, foreign_key="person.id", ondelete="CASCADE",
                                  index=True)
    address: str = ""
    raw: bytes | None = Field(default=None, sa_column=Column(RawMail, nullable=True))
    status: str = DeliveryStatus.PENDING.value
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    last_error: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class DigestRun(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("person_id", "cadence", "period_start"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", ondelete="CASCADE")
    cadence: str                # daily, weekly
    period_start: datetime
    period_end: datetime
    status: str = "pending"     # pending, queued, empty
    created_at: datetime = Field(default_factory=utcnow)


class ImapState(SQLModel, table=True):
    """Where a polled mailbox stands, and which instance holds it (a lease that expires)."""

    mailbox: str = Field(primary_key=True)
    uidvalidity: int = 0
    last_uid: int = 0
    lease_owner: str = ""
    lease_expires: datetime | None = None


class ImapSeen(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("mailbox", "uidvalidity", "uid"),)

    id: int | None = Field(default=None, primary_key=True)
    mailbox: str
    uidvalidity: int
    uid: int
    inbox_id: int | None = Field(default=None, foreign_key="inboxitem.id", ondelete="SET NULL")


class LoginToken(SQLModel, table=True):
    """A one-time sign-in link: only its hash is stored."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=64)
    person_id: int = Field(foreign_key="person.id", ondelete="CASCADE")
    expires_at: datetime
    used_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class AuditLog(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = "cli"
    action: str
    target: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
