"""Authorise step: may this sender post to this community now?

A decision is "accept", "hold" (a moderator decides; the sender is told) or "reject", with
the reason recorded. Rules, in order: upstream spam verdicts and failed DMARC are held;
guests post only where the community admits guests; read-only members are held; a reply-all
that would bring a community closed to guests into a conversation with people outside the
company is held for confirmation (it would otherwise put internal discussion in front of a
customer, or a customer's mail in front of the whole community, silently); the posting
policy (open, members, moderated).
"""

from __future__ import annotations

from dataclasses import dataclass

from inbound.people import MemberInfo, Sender


@dataclass(frozen=True)
class Decision:
    action: str     # accept, hold, reject
    reason: str
    code: str = ""  # the notice to the sender, when one is due (held, not_member, ...)


ACCEPT = Decision("accept", "")


def authorise(*, policy: str, admits_guests: bool, sender: Sender, member: MemberInfo | None,
              verdict_kind: str, dmarc: str, external: tuple[str, ...] = (),
              visibility: str = "internal") -> Decision:
    """`external`: the message's other To/Cc recipients outside the company."""
    if verdict_kind == "spam":
        return Decision("hold", "the upstream spam filter flagged it", "held_spam")
    if dmarc == "fail":
        return Decision("hold", "the sender's domain failed DMARC: the From address may be "
                                "forged", "held_dmarc")
    if not sender.address:
        return Decision("reject", "no valid From address", "")
    is_guest = sender.kind == "guest" and (member is None or member.role != "owner")
    if is_guest and not admits_guests:
        return Decision("hold", "guests (addresses outside the company) may not post in this "
                                "community", "guests_not_admitted")
    if member is not None and member.role == "readonly":
        return Decision("hold", "read-only members may not post", "held_readonly")
    if external and not admits_guests and visibility != "public":
        shown = ", ".join(external[:3]) + ("…" if len(external) > 3 else "")
        return Decision("hold", f"also addressed to people outside the company ({shown}): "
                                "held until confirmed, so that this community is not brought "
                                "into a conversation with guests by a reply-all",
                        "confirm_external")
    if policy == "moderated":
        return Decision("hold", "every post in this community is moderated", "held_moderated")
    if policy == "members" and member is None:
        return Decision("hold", "only members may post to this community", "not_member")
    return ACCEPT
