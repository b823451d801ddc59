"""Where the packages meet: the processor (inbound) gets its handlers (outbound) here.

Only `bridge`'s serve wiring and CLI compose `inbound`, `outbound` and `archive`
(DESIGN.md); this module is that composition, shared by both.
"""

from __future__ import annotations

from bridge.app import App
from bridge.events import Handlers


def handlers(app: App) -> Handlers:
    """The functions the processor calls for commands, bounces, moderation and notices."""
    return Handlers()


def processor(app: App, *, fan_out: bool = True, notify: bool = True):  # type: ignore[no-untyped-def]
    from inbound.processor import Processor

    return Processor(app, handlers(app), fan_out=fan_out, notify=notify)
