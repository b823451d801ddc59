"""Authorise step: may this sender post to this community now?

A decision is "accept", "hold" (a moderator decides; the sender is told) or "reject", with
the reason recorded. Rules, in order: upstream spam verdicts and failed DMARC are held;
guests post only where the community admits guests; the posting policy (open, members,
moderated); read-only members are held.
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
              verdict_kind: str, dmarc: str) -> Decision:
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
    if policy == "moderated":
        return Decision("hold", "every post in this community is moderated", "held_moderated")
    if policy == "members" and member is None:
        return Decision("hold", "only members may post to this community", "not_member")
    return ACCEPT
