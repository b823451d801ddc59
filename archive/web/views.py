"""The pages of the web view. Each handler is a plain function run in a worker thread
(database reads are blocking) that receives the request, the `Viewer` and the posted form.

Permission rule, applied by every handler that shows archive content: a community whose
id is not in `viewer.visible` does not exist for this reader (404, never 403, so even its
existence does not leak); raw mail and mbox downloads need membership of the community.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markupsafe import Markup, escape
from sqlalchemy import func
from sqlmodel import Session, col, select
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from archive.search import search
from archive.web.auth import SignIn
from archive.web.metrics import Histogram
from archive.web.viewer import Viewer, obscure
from bridge.app import App
from bridge.directory import audit, derived_kind
from bridge.i18n import LANGUAGES, Catalogues
from bridge.models import (
    Address,
    Attachment,
    Community,
    Conversation,
    DeliveryMode,
    InboxItem,
    Membership,
    Message,
    MessageStatus,
    Person,
)
from bridge.tokens import reply_token

PAGE_SIZE = 25
SEARCH_PAGE = 20
FEED_SIZE = 50
INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_CID = re.compile(r'src="cid:([^"]*)"')

# People ranking ("who knows about X"): a function (connection, query, reader) -> list of
# rows; None until archive.people exists (the page then groups search hits by author).
PeopleRanker = Callable[..., list[Any]]


def mid_url(message_id: str) -> str:
    """The permalink path of a Message-ID (public-inbox style)."""
    return "/m/" + quote(message_id, safe="@.-_+~!$&'()*,;=:")


def attachment_url(attachment: Attachment) -> str:
    name = quote(attachment.filename or f"part-{attachment.position}", safe="")
    return f"/a/{attachment.id}/{name}"


def _mbox_from_line(sender: str, moment: datetime) -> bytes:
    sender = re.sub(r"\s", "", sender) or "MAILER-DAEMON"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"From {sender} {moment.strftime('%a %b %d %H:%M:%S %Y')}\n".encode(
        "ascii", "replace")


_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def mbox_entry(raw: bytes, sender: str, moment: datetime) -> bytes:
    """One mboxrd entry: the raw bytes as received, `From ` lines quoted (reversibly)."""
    body = _FROM_LINE.sub(rb">\1", raw)
    if not body.endswith(b"\n"):
        body += b"\n"
    return _mbox_from_line(sender, moment) + body + b"\n"


@dataclass
class Pages:
    app: App
    catalogue: Catalogues
    signin: SignIn
    search_latency: Histogram
    rank_people: PeopleRanker | None = None

    # -- helpers ------------------------------------------------------------------------------
    def page(self, v: Viewer, template: str, status: int = 200, **context: Any
             ) -> HTMLResponse:
        html = self.catalogue.render(
            f"web/{template}", v.language, v=v, instance=self.app.settings.instance.name,
            mid_url=mid_url, attachment_url=attachment_url, **context)
        return HTMLResponse(html, status_code=status)

    def not_found(self, v: Viewer) -> HTMLResponse:
        return self.page(v, "error.html", 404, title=self._("Not found", v),
                         message=self._("There is nothing here, or not for you: it may be "
                                        "in a community you cannot read.", v))

    def _(self, message: str, v: Viewer, **values: Any) -> str:
        return self.catalogue.gettext(v.language, message, **values)

    def _community(self, db: Session, v: Viewer, slug: str) -> Community | None:
        community = db.exec(select(Community).where(Community.slug == slug)).first()
        if community is None or community.id not in v.visible:
            return None
        return community

    def _authors(self, db: Session, ids: set[int]) -> dict[int, Person]:
        if not ids:
            return {}
        return {p.id: p for p in db.exec(select(Person).where(col(Person.id).in_(ids)))
                if p.id is not None}

    # -- communities --------------------------------------------------------------------------
    def home(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            communities = db.exec(select(Community).where(col(Community.id).in_(v.visible))
                                  .order_by(Community.name)).all() if v.visible else []
            counts = dict(db.exec(
                select(Conversation.community_id, func.count())
                .where(col(Conversation.community_id).in_(v.visible))
                .group_by(Conversation.community_id)).all()) if v.visible else {}
        return self.page(v, "communities.html", communities=communities, counts=counts)

    def community(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        page = _page_number(request)
        with Session(self.app.reader) as db:
            community = self._community(db, v, request.path_params["slug"])
            if community is None:
                return self.not_found(v)
            rows = db.exec(select(Conversation)
                           .where(Conversation.community_id == community.id)
                           .order_by(col(Conversation.last_activity).desc(),
                                     col(Conversation.id).desc())
                           .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)).all()
            conversations = list(rows[:PAGE_SIZE])
            authors = self._authors(db, {c.author_id for c in conversations if c.author_id})
        return self.page(v, "community.html", community=community,
                         conversations=conversations, authors=authors, page=page,
                         more=len(rows) > PAGE_SIZE)

    # -- conversations ------------------------------------------------------------------------
    def conversation(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            conversation = db.get(Conversation, request.path_params["id"])
            if conversation is None or conversation.community_id not in v.visible:
                return self.not_found(v)
            community = db.get(Community, conversation.community_id)
            assert community is not None
            messages = list(db.exec(select(Message)
                                    .where(Message.conversation_id == conversation.id)
                                    .order_by(Message.date, Message.id)).all())
            attachments: dict[int, list[Attachment]] = {}
            for attachment in db.exec(select(Attachment).where(
                    col(Attachment.message_id).in_([m.id for m in messages]))
                    .order_by(Attachment.message_id, Attachment.position)):
                attachments.setdefault(attachment.message_id, []).append(attachment)
        bodies = {m.id: self._html(m, attachments.get(m.id or 0, []), v) for m in messages}
        domain = self.app.settings.instance.primary_domain
        if v.person is not None and v.member_of(community.id or 0):
            token = reply_token(self.app.secret, v.person.id or 0, conversation.id or 0)
            reply_to = f"reply+{token}@{domain}"
        else:
            reply_to = f"{community.slug}@{domain}"
        last = messages[-1] if messages else None
        mailto = f"mailto:{reply_to}?subject=" + quote("Re: " + conversation.subject)
        if last is not None:
            mailto += "&In-Reply-To=" + quote(f"<{last.message_id}>")
        return self.page(v, "conversation.html", community=community,
                         conversation=conversation, messages=messages,
                         attachments=attachments, bodies=bodies, mailto=mailto,
                         reply_to=reply_to, member=v.member_of(community.id or 0))

    def _html(self, message: Message, attachments: list[Attachment], v: Viewer
              ) -> Markup | None:
        """The message's stored HTML, which the sanitiser produced at ingestion (the only
        HTML from mail ever marked safe); inline images point at our attachment URLs."""
        if not message.html or message.status != MessageStatus.PUBLISHED.value:
            return None
        by_cid = {a.content_id.strip("<>"): a for a in attachments if a.content_id}

        def image(match: re.Match[str]) -> str:
            found = by_cid.get(match.group(1).strip("<>"))
            if found is None:
                return 'src=""'
            return f'src="{escape(attachment_url(found))}"'

        return Markup(_CID.sub(image, v.text(message.html)))

    def permalink(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            message = self._message(db, v, request.path_params["mid"])
            if message is None:
                return self.not_found(v)
        return RedirectResponse(f"/t/{message.conversation_id}#m{message.id}", 302)

    def _message(self, db: Session, v: Viewer, message_id: str) -> Message | None:
        if not v.visible:
            return None
        return db.exec(select(Message).where(
            Message.message_id == message_id.strip().strip("<>"),
            col(Message.community_id).in_(v.visible)).order_by(Message.id)).first()

    def raw(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            message = self._message(db, v, request.path_params["mid"])
            if message is None or not v.member_of(message.community_id):
                return self.not_found(v)
            if message.status != MessageStatus.PUBLISHED.value or message.inbox_id is None:
                return self.not_found(v)
            item = db.get(InboxItem, message.inbox_id)
            if item is None:
                return self.not_found(v)
            data = self.app.raw_mail(item)
        return Response(data, media_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "private, no-store"})

    # -- mbox -----------------------------------------------------------------------------
    def conversation_mbox(self, request: Request, v: Viewer, form: FormData | None
                          ) -> Response:
        with Session(self.app.reader) as db:
            conversation = db.get(Conversation, request.path_params["id"])
            if (conversation is None or conversation.community_id not in v.visible
                    or not v.member_of(conversation.community_id)):
                return self.not_found(v)
        return self._mbox(Message.conversation_id == conversation.id,
                          f"conversation-{conversation.id}.mbox")

    def community_mbox(self, request: Request, v: Viewer, form: FormData | None
                       ) -> Response:
        with Session(self.app.reader) as db:
            community = self._community(db, v, request.path_params["slug"])
            if community is None or not v.member_of(community.id or 0):
                return self.not_found(v)
        return self._mbox(Message.community_id == community.id, f"{community.slug}.mbox")

    def _mbox(self, where: Any, filename: str) -> Response:
        def chunks() -> Iterator[bytes]:
            last = 0
            while True:
                with Session(self.app.reader) as db:
                    rows = db.exec(select(Message.id, Message.from_address, Message.date,
                                          InboxItem)
                                   .join(InboxItem, col(InboxItem.id) == Message.inbox_id)
                                   .where(where, Message.status == "published",
                                          col(Message.id) > last)
                                   .order_by(Message.id).limit(200)).all()
                    if not rows:
                        return
                    for pk, sender, moment, item in rows:
                        last = pk
                        yield mbox_entry(self.app.raw_mail(item), sender, moment)

        return StreamingResponse(chunks(), media_type="application/mbox", headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "private, no-store"})

    # -- attachments ------------------------------------------------------------------------
    def attachment(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            attachment = db.get(Attachment, request.path_params["id"])
            message = db.get(Message, attachment.message_id) if attachment else None
            if (attachment is None or message is None or message.community_id not in v.visible
                    or message.status != MessageStatus.PUBLISHED.value):
                return self.not_found(v)
        try:
            data = self.app.blobs.get(attachment.sha256)
        except (OSError, KeyError):
            return self.not_found(v)
        kind = attachment.content_type.lower().split(";")[0].strip()
        name = attachment.filename or f"part-{attachment.position}"
        ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", name)[:100] or "attachment"
        disposition = "inline" if kind in INLINE_IMAGES else "attachment"
        media = kind if kind in INLINE_IMAGES else "application/octet-stream"
        return Response(data, media_type=media, headers={
            "Content-Disposition": f'{disposition}; filename="{ascii_name}"; '
                                   f"filename*=UTF-8''{quote(name, safe='')}",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=3600"})

    # -- feeds --------------------------------------------------------------------------------
    def feed(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            community = self._community(db, v, request.path_params["slug"])
            if community is None:
                return self.not_found(v)
            messages = db.exec(select(Message).where(
                Message.community_id == community.id, Message.status == "published")
                .order_by(col(Message.date).desc(), col(Message.id).desc())
                .limit(FEED_SIZE)).all()
        base = self.app.settings.instance.base_url.rstrip("/")
        ns = "http://www.w3.org/2005/Atom"
        feed = ET.Element("feed", xmlns=ns)
        ET.SubElement(feed, "title").text = community.name
        ET.SubElement(feed, "id").text = f"{base}/c/{community.slug}"
        ET.SubElement(feed, "link", href=f"{base}/c/{community.slug}")
        ET.SubElement(feed, "link", rel="self", href=f"{base}/c/{community.slug}/atom")
        updated = messages[0].date if messages else community.created_at
        ET.SubElement(feed, "updated").text = v.iso(updated)
        for message in messages:
            entry = ET.SubElement(feed, "entry")
            ET.SubElement(entry, "title").text = _xml_text(v.text(message.subject))
            ET.SubElement(entry, "id").text = f"{base}{mid_url(message.message_id)}"
            ET.SubElement(entry, "link", href=f"{base}{mid_url(message.message_id)}")
            ET.SubElement(entry, "updated").text = v.iso(message.date)
            author = ET.SubElement(entry, "author")
            ET.SubElement(author, "name").text = _xml_text(
                v.name(message.from_name, message.from_address))
            content = ET.SubElement(entry, "content", type="text")
            content.text = _xml_text(v.text(message.text[:4000]))
        body = b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, "utf-8")
        return Response(body, media_type="application/atom+xml; charset=utf-8")

    # -- search ---------------------------------------------------------------------------
    def search(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        query = request.query_params.get("q", "").strip()[:500]
        page = _page_number(request)
        results = None
        if query:
            started = time.perf_counter()
            results = search(self.app.reader, query, reader=v.reader, limit=SEARCH_PAGE,
                             offset=(page - 1) * SEARCH_PAGE, now=self.app.clock.now(),
                             count_total=True)
            self.search_latency.observe(time.perf_counter() - started)
        hits = []
        for hit in results.hits if results else []:
            # snippet_html is escaped by archive.search.snippets, matches wrapped in <mark>.
            hits.append({"hit": hit, "author": v.text(hit.author),
                         "snippet": Markup(v.text(hit.snippet_html))})
        total = results.total if results else 0
        return self.page(v, "search.html", query=query, hits=hits, total=total or 0,
                         page=page, more=bool(total and total > page * SEARCH_PAGE
                                              and len(hits) == SEARCH_PAGE))

    # -- people -------------------------------------------------------------------------------
    def people(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        query = request.query_params.get("q", "").strip()[:500]
        if query:
            return self._experts(v, query)
        page = _page_number(request)
        with Session(self.app.reader) as db:
            rows = db.exec(
                select(Person, func.count(func.distinct(Membership.community_id)))
                .join(Membership, col(Membership.person_id) == Person.id)
                .where(col(Membership.community_id).in_(v.visible),
                       col(Person.forgotten_at).is_(None))
                .group_by(col(Person.id))
                .order_by(Person.display_name, Person.id)
                .offset((page - 1) * 100).limit(101)).all() if v.visible else []
            people = [(p, n) for p, n in rows[:100]]
            addresses = self._addresses(db, {p.id for p, _ in people if p.id})
        listed = [{"person": p, "communities": n, "kind": self._kind(p, addresses),
                   "name": v.name(p.display_name, addresses.get(p.id or 0, ""))}
                  for p, n in people]
        return self.page(v, "people.html", query="", people=listed, experts=[], page=page,
                         more=len(rows) > 100)

    def _addresses(self, db: Session, ids: set[int]) -> dict[int, str]:
        if not ids:
            return {}
        found: dict[int, str] = {}
        for address in db.exec(select(Address).where(col(Address.person_id).in_(ids))
                               .order_by(col(Address.primary).desc(), Address.id)):
            found.setdefault(address.person_id, address.email)
        return found

    def _kind(self, person: Person, addresses: dict[int, str]) -> str:
        if person.kind:
            return person.kind
        address = addresses.get(person.id or 0, "")
        return derived_kind(self.app.settings, address) if address else "guest"

    def _experts(self, v: Viewer, query: str) -> Response:
        """Who wrote about `query`: until archive.people's ranking is passed in, the
        search hits (with the reader's permissions) grouped by author."""
        experts: list[dict[str, Any]] = []
        if self.rank_people is not None:
            with self.app.reader.connect() as connection:
                experts = [{"name": v.text(row.name or row.address),
                            "person_id": row.person_id, "kind": row.kind,
                            "threads": [{"conversation": t.conversation, "id": None,
                                         "subject": t.subject} for t in row.threads]}
                           for row in self.rank_people(connection, query, v.reader)]
        else:
            started = time.perf_counter()
            results = search(self.app.reader, query, reader=v.reader, limit=100,
                             now=self.app.clock.now())
            self.search_latency.observe(time.perf_counter() - started)
            groups: dict[str, dict[str, Any]] = {}
            for hit in results.hits:
                group = groups.setdefault(hit.author_address, {
                    "name": v.text(hit.author), "address": hit.author_address,
                    "threads": [], "person_id": None, "kind": ""})
                group["threads"].append(hit)
            with Session(self.app.reader) as db:
                found = {a.email: a.person_id for a in db.exec(select(Address).where(
                    col(Address.email).in_(list(groups))))} if groups else {}
                people = self._authors(db, set(found.values()))
            for group in groups.values():
                person = people.get(found.get(group["address"], 0))
                if person is not None:
                    group["person_id"] = person.id
                    group["kind"] = self._kind(person, {person.id or 0: group["address"]})
            experts = sorted(groups.values(), key=lambda g: -len(g["threads"]))
        return self.page(v, "people.html", query=query, people=[], experts=experts, page=1,
                         more=False)

    def person(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        with Session(self.app.reader) as db:
            person = db.get(Person, request.path_params["id"])
            if person is None or person.forgotten_at is not None or not v.visible:
                return self.not_found(v)
            communities = db.exec(select(Community).join(
                Membership, col(Membership.community_id) == Community.id).where(
                Membership.person_id == person.id,
                col(Community.id).in_(v.visible)).order_by(Community.name)).all()
            recent = db.exec(select(Message).where(
                Message.author_id == person.id, col(Message.community_id).in_(v.visible),
                Message.status == "published")
                .order_by(col(Message.date).desc()).limit(20)).all()
            if not communities and not recent:
                return self.not_found(v)
            addresses = self._addresses(db, {person.id or 0})
            slugs = {c.id: c.slug for c in db.exec(select(Community).where(
                col(Community.id).in_({m.community_id for m in recent})))} if recent else {}
        address = addresses.get(person.id or 0, "")
        return self.page(v, "person.html", person=person, communities=communities,
                         recent=recent, slugs=slugs, kind=self._kind(person, addresses),
                         name=v.name(person.display_name, address),
                         address=address if v.signed_in else "")

    # -- settings -----------------------------------------------------------------------------
    def settings(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        if v.person is None:
            return RedirectResponse("/signin", 303)
        saved = request.query_params.get("saved") == "1"
        errors: list[str] = []
        if form is not None:
            errors = self._save_settings(v, form)
            if not errors:
                return RedirectResponse("/settings?saved=1", 303)
        with Session(self.app.reader) as db:
            memberships = db.exec(select(Membership, Community).join(
                Community, col(Community.id) == Membership.community_id).where(
                Membership.person_id == v.person.id).order_by(Community.name)).all()
            person = db.get(Person, v.person.id)
        return self.page(v, "settings.html", 400 if errors else 200, errors=errors,
                         saved=saved, memberships=memberships, person=person,
                         modes=[m.value for m in DeliveryMode], languages=LANGUAGES)

    def _save_settings(self, v: Viewer, form: FormData) -> list[str]:
        assert v.person is not None
        language = str(form.get("language", ""))
        timezone = str(form.get("timezone", "")).strip()
        errors = []
        if language and language not in LANGUAGES:
            errors.append(self._("Unknown language.", v))
        if timezone:
            try:
                ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                errors.append(self._("Unknown time zone: %(zone)s", v, zone=timezone))
        modes = {m.value for m in DeliveryMode}
        wanted: dict[int, str] = {}
        for key, value in form.multi_items():
            if key.startswith("mode_") and key[5:].isdigit():
                if str(value) not in modes:
                    errors.append(self._("Unknown delivery mode.", v))
                else:
                    wanted[int(key[5:])] = str(value)
        if errors:
            return errors
        with self.app.session() as db:
            person = db.get(Person, v.person.id)
            assert person is not None
            person.language, person.timezone = language, timezone
            db.add(person)
            for membership in db.exec(select(Membership).where(
                    Membership.person_id == person.id)):
                mode = wanted.get(membership.community_id)
                if mode and mode != membership.delivery_mode:
                    audit(db, "member.update", f"community#{membership.community_id}:"
                          f"person#{person.id}", actor="web",
                          changes=f"{membership.delivery_mode}->{mode}")
                    membership.delivery_mode = mode
                    db.add(membership)
        return []

    def leave(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        if v.person is None:
            return RedirectResponse("/signin", 303)
        with self.app.session() as db:
            membership = db.exec(select(Membership).where(
                Membership.person_id == v.person.id,
                Membership.community_id == request.path_params["id"])).first()
            if membership is not None:
                community = db.get(Community, membership.community_id)
                db.delete(membership)
                audit(db, "member.remove",
                      f"{community.slug if community else '?'}:person#{v.person.id}",
                      actor="web")
        return RedirectResponse("/settings?saved=1", 303)


def _page_number(request: Request) -> int:
    try:
        return max(1, min(int(request.query_params.get("page", "1")), 10_000))
    except ValueError:
        return 1


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold (control characters from mail would make the feed invalid)."""
    return _XML_BAD.sub("", text)


__all__ = ["Pages", "PeopleRanker", "mbox_entry", "mid_url", "obscure"]
