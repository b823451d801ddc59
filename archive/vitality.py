"""Community vitality: the figures a community manager reports against management's goals.

A community's goals live in `Community.goals`, a JSON object mapping a goal key to a target,
e.g. `{"answered_within_48h": 0.8, "active_contributors_per_month": 10,
"new_conversations_per_week": 5}`. A goal key is a metric, optionally followed by the window
it is counted over (`_per_week`, `_per_month`); without one, the report's period is used.

| metric | value | met when |
|---|---|---|
| `answered_within_<N>h` | share of the window's questions answered within N h | >= target |
| `active_contributors` | distinct authors of messages in the window | value >= target |
| `new_conversations` | conversations started in the window | value >= target |
| `messages` | messages posted in the window | value >= target |

Every conversation counts as a question (a post that waits for an answer): telling
questions from announcements by their wording would make the figure hard to explain. A
question whose deadline (start + N hours) is still ahead of the window's end and that has
no reply yet is left out, not counted as a failure: it may still be answered in time.
Share targets may be given as fractions (0.8) or percentages (80).

Windows are rolling and end at the moment measured (a week is 7 days, a month 30), so the
figures of "this period" and "the previous one" compare equal lengths. The figures read the
archive's tables only (conversation, message) and are computed by the database, so a
report costs a few aggregate queries whatever the community's size.

`archive` does not import `outbound`: the digest gets `vitality_for(engine)` from the
wiring, as a plain function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.engine import Connection

from bridge.models import Community, Conversation, Message, MessageStatus

_conversation = Conversation.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]

PERIODS = {"week": timedelta(days=7), "month": timedelta(days=30)}
_GOAL_RE = re.compile(r"^(?P<metric>answered_within_(?P<hours>\d{1,4})h|active_contributors"
                      r"|new_conversations|messages)(?:_per_(?P<window>week|month))?$")
LABELS = {
    "answered_within": "questions answered within {hours} h",
    "active_contributors": "active contributors",
    "new_conversations": "new conversations",
    "messages": "messages",
}


@dataclass(frozen=True)
class Figures:
    """What happened in one community over one window [start, end)."""

    start: datetime
    end: datetime
    questions: int            # conversations started, whose answer deadline has passed or
    answered_in_time: int     # ... that were answered within `answer_hours`
    answer_hours: int
    new_conversations: int
    messages: int
    active_contributors: int
    unanswered: int           # started in the window, no reply at all by `end`

    @property
    def answered_share(self) -> float | None:
        return self.answered_in_time / self.questions if self.questions else None


@dataclass(frozen=True)
class GoalResult:
    """One goal: this window's value, the previous window's, and whether the target is met."""

    key: str
    metric: str         # answered_within, active_contributors, new_conversations, messages
    label: str          # English description (the digest translates by `metric`)
    hours: int          # for answered_within: N; else 0
    kind: str           # "share" (0..1) or "count"
    target: float
    window: str         # week or month
    value: float | None
    previous: float | None
    met: bool | None    # None: nothing to measure yet (no question in the window)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(connection: Connection, community_id: int, start: datetime, end: datetime,
            answer_hours: int = 48) -> Figures:
    """The figures of one community over [start, end), as of `end`."""
    c, m = _conversation.c, _message.c
    started = and_(c.community_id == community_id, c.started_at >= start, c.started_at < end)
    deadline = timedelta(hours=answer_hours)
    rows = connection.execute(select(c.started_at, c.first_reply_at).where(started)).all()
    # The deadline comparison is made here rather than in SQL: SQLite stores datetimes as
    # text and cannot add an interval portably. One row per conversation started in the
    # window: a few hundred at most for a week.
    questions = answered_in_time = unanswered = 0
    for started_at, first_reply in rows:
        replied = first_reply is not None and first_reply < end
        if not replied:
            unanswered += 1
        in_time = replied and first_reply - started_at <= deadline
        if in_time:
            answered_in_time += 1
            questions += 1
        elif started_at + deadline <= end or replied:
            questions += 1
    published = and_(m.community_id == community_id, m.date >= start, m.date < end,
                     m.status == MessageStatus.PUBLISHED.value)
    messages, contributors = connection.execute(
        select(func.count(), func.count(func.distinct(m.author_id))).where(published)).one()
    return Figures(start=start, end=end, questions=questions, answered_in_time=answered_in_time,
                   answer_hours=answer_hours, new_conversations=len(rows),
                   messages=int(messages), active_contributors=int(contributors),
                   unanswered=unanswered)


def parse_goal(key: str) -> tuple[str, int, str] | None:
    """(metric, hours, window or "") for a goal key, None when the key is not understood."""
    match = _GOAL_RE.match(key)
    if match is None:
        return None
    metric = match["metric"]
    hours = int(match["hours"] or 0)
    if hours:
        metric = "answered_within"
    return metric, hours, match["window"] or ""


def _value(figures: Figures, metric: str) -> float | None:
    if metric == "answered_within":
        return figures.answered_share
    return float(getattr(figures, metric))


def goal_report(connection: Connection, community_id: int, goals: Mapping[str, Any],
                period: str, end: datetime) -> list[GoalResult]:
    """Each understood goal, measured over its window ending at `end` and the one before.

    Keys that are not goals this module knows are skipped (they may belong to a newer
    version); targets that are not numbers too.
    """
    results: list[GoalResult] = []
    for key in sorted(goals):
        parsed = parse_goal(key)
        target = goals[key]
        if parsed is None or isinstance(target, bool) or not isinstance(target, int | float):
            continue
        metric, hours, window = parsed
        window = window or period
        length = PERIODS[window]
        kind = "share" if metric == "answered_within" else "count"
        goal = float(target) / 100 if kind == "share" and target > 1 else float(target)
        now = measure(connection, community_id, end - length, end, hours or 48)
        before = measure(connection, community_id, end - 2 * length, end - length, hours or 48)
        value = _value(now, metric)
        results.append(GoalResult(
            key=key, metric=metric, label=LABELS[metric].format(hours=hours), hours=hours,
            kind=kind, target=goal, window=window, value=value,
            previous=_value(before, metric), met=None if value is None else value >= goal))
    return results


def community_stats(connection: Connection, slug: str, period: str,
                    end: datetime) -> dict[str, Any] | None:
    """Everything `causerie community stats` shows: the figures of this period and the
    previous one, and the goal report; None when there is no such community."""
    row = connection.execute(select(_community.c.id, _community.c.name, _community.c.goals)
                             .where(_community.c.slug == slug)).first()
    if row is None:
        return None
    length = PERIODS[period]
    current = measure(connection, row.id, end - length, end)
    previous = measure(connection, row.id, end - 2 * length, end - length)

    def plain(figures: Figures) -> dict[str, Any]:
        data = asdict(figures)
        data["start"], data["end"] = figures.start.isoformat(), figures.end.isoformat()
        data["answered_share"] = figures.answered_share
        return data

    return {"community": slug, "name": row.name, "period": period, "end": end.isoformat(),
            "current": plain(current), "previous": plain(previous),
            "goals": [g.as_dict() for g in goal_report(connection, row.id, row.goals or {},
                                                        period, end)]}


VitalityFunction = Callable[[int, str, datetime], list[GoalResult]]


def vitality_for(engine: Engine) -> VitalityFunction:
    """The function the digest is given: `(community_id, period, end) -> goal results`."""
    def vitality(community_id: int, period: str, end: datetime) -> list[GoalResult]:
        with engine.connect() as connection:
            goals = connection.execute(select(_community.c.goals).where(
                _community.c.id == community_id)).scalar_one_or_none() or {}
            return goal_report(connection, community_id, goals, period, end)
    return vitality


__all__ = ["PERIODS", "Figures", "GoalResult", "VitalityFunction", "community_stats",
           "goal_report", "measure", "parse_goal", "vitality_for"]
