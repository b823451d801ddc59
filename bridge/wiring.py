"""Where the packages meet: the processor (inbound) gets its handlers (outbound) here.

Only `bridge`'s serve wiring and CLI compose `inbound`, `outbound` and `archive`
(DESIGN.md); this module is that composition, shared by both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from bridge.app import App

if TYPE_CHECKING:
    from outbound.digest import DigestFunctions
from bridge.events import Handlers


def handlers(app: App) -> Handlers:
    """The functions the processor calls for commands, bounces, moderation and notices."""
    from outbound.digest.replies import DigestReplies
    from outbound.handlers import build_handlers

    built = build_handlers(app)
    return replace(built, extra={**built.extra, "digest": DigestReplies(app)})


def digest_functions(app: App) -> DigestFunctions:
    """What digests take from the archive: the vitality figures for managers, and the
    people finder for "questions you could answer"."""
    from archive.people import CouldAnswer
    from archive.vitality import vitality_for
    from outbound.digest import DigestFunctions

    return DigestFunctions(vitality=vitality_for(app.reader),
                           people_finder=CouldAnswer(app.reader,
                                                     app.settings.instance.staff_domains))


def processor(app: App, *, fan_out: bool = True, notify: bool = True):  # type: ignore[no-untyped-def]
    from inbound.processor import Processor

    return Processor(app, handlers(app), fan_out=fan_out, notify=notify)
