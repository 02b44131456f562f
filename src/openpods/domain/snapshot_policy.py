"""Scheduled snapshots: when a run is due (``cron``) and which runs to delete (``retention_policy``). Pure.

cron
====

A standard 5-field cron expression -- ``minute hour day-of-month month day-of-week`` -- evaluated in **UTC**,
or one of the aliases ``@hourly``, ``@daily`` (= ``@midnight``), ``@weekly``, ``@monthly``, ``@yearly``
(= ``@annually``). Field syntax is croniter's: ``*``, lists ``1,5``, ranges ``1-5``, steps ``*/15``, names
``MON``/``JAN``, ``L`` (last day of month) and ``#`` (nth weekday). When both day-of-month and day-of-week are
restricted, a day matching either one matches (classic cron). Six- or seven-field (seconds/years) forms,
``@reboot``, hashed ``H`` fields and expressions that never fire (``0 0 30 2 *``) are refused. The empty string
means "no schedule".

Due runs: :func:`due_runs` returns the most recent scheduled time (a *slot*) that is at or before ``now`` and
strictly after both the snapshot's creation and its last run -- or ``None``. After a long outage it returns only
the latest missed slot: **one** catch-up run, never one per missed slot. Record the returned slot (or the time
the run was taken: anything at or after the slot) as the new ``last_run``; the same slot is then never returned
again, so a restart between "run taken" and "next check" cannot double a run, and a clock that steps back
cannot either. A snapshot created exactly on a slot does not run for that slot (creating it took the copy).
To survive a crash *during* a run, claim the slot first (a row unique on (snapshot, slot), status CREATING),
then copy, then mark it done: after a restart the slot is already taken, and the unfinished row is finished or
redone under the same slot -- never a second run for it.

retention_policy
================

A comma-separated list of rules, whitespace around items ignored; each rule at most once; empty = keep all:

- ``keep_last=N`` -- N >= 1: the N newest runs are kept;
- ``max_age=<int><unit>`` -- unit ``s``, ``m`` (minutes), ``h``, ``d`` or ``w``, value >= 1: runs no older than
  this are kept.

Examples: ``keep_last=7``, ``max_age=30d``, ``keep_last=7,max_age=30d``.

Semantics, precisely (:func:`select_to_prune`): runs are ordered newest first by ``taken_at`` (ties: larger
``run_id`` first). A run is **pruned** when it is not the newest run **and** every rule that is given says it
may go: it is not among the ``keep_last`` newest (if ``keep_last`` is given) **and** its age ``now - taken_at``
is strictly greater than ``max_age`` (if ``max_age`` is given). In other words a run is kept if *any* given
rule keeps it -- with both rules, the union "the last 7, plus anything from the last 30 days" survives -- and the
newest run is always kept, so a policy never deletes the last copy. Runs with a ``taken_at`` in the future
(clock skew) count as age 0.

Times: all functions take timezone-aware datetimes; naive ones are taken to be UTC (what SQLite hands back).
Validation errors are ``ValueError`` whose message starts with the field name (``cron: ...``,
``retention_policy: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter
from croniter.croniter import CroniterError

__all__ = [
    "ALIASES",
    "CronSchedule",
    "RetentionPolicy",
    "due_run",
    "due_runs",
    "next_run_after",
    "parse_cron",
    "parse_retention_policy",
    "select_to_prune",
    "validate_cron",
    "validate_retention_policy",
]

ALIASES: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELD_RE = re.compile(r"^[A-Za-z0-9*/,#?-]+$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RULE_RE = re.compile(r"^([a-z_]+)\s*=\s*(\S+)$")
_DURATION_RE = re.compile(r"^([0-9]+)([smhdw])$")
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
_TINY = timedelta(microseconds=1)


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}.")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ------------------------------------------------------------------------------------------- cron


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A validated cron schedule. ``expr`` is what the user wrote (trimmed), ``fields`` the 5-field form."""

    expr: str
    fields: str

    def latest_at_or_before(self, at: datetime) -> datetime:
        """The latest slot ``<= at`` (UTC)."""
        at = _utc(at, "at")
        # croniter's get_prev is exclusive of its start; nudge past `at` so a slot exactly at `at` counts.
        return croniter(self.fields, at + _TINY).get_prev(datetime).astimezone(UTC).replace(fold=0)

    def next_after(self, after: datetime) -> datetime:
        """The first slot ``> after`` (UTC)."""
        return croniter(self.fields, _utc(after, "after")).get_next(datetime).astimezone(UTC).replace(fold=0)


def parse_cron(expr: str) -> CronSchedule:
    """Parse and validate a cron expression (see the module docstring); ``ValueError("cron: ...")``."""
    if not isinstance(expr, str):
        raise ValueError("cron: must be a string.")
    text = expr.strip()
    if not text:
        raise ValueError("cron: is empty (an empty cron means no schedule; there is nothing to parse).")
    if text.startswith("@"):
        fields = ALIASES.get(text.lower())
        if fields is None:
            raise ValueError(
                f"cron: unknown alias {text!r}; use one of {', '.join(sorted(ALIASES))} or 5 fields."
            )
    else:
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(
                f"cron: {text!r} has {len(parts)} field(s); exactly 5 are needed: "
                "minute hour day-of-month month day-of-week (e.g. '0 3 * * *' for 03:00 UTC daily)."
            )
        for part in parts:
            if not _FIELD_RE.match(part) or part.upper().startswith("H"):
                raise ValueError(f"cron: field {part!r} of {text!r} is not valid cron syntax.")
        fields = " ".join(parts)
    try:
        croniter(fields, _REFERENCE).get_next(datetime)
    except CroniterError as exc:
        message = str(exc)
        if "failed to find" in message:
            raise ValueError(f"cron: {text!r} never matches any date.") from None
        raise ValueError(f"cron: {text!r} is not a valid cron expression ({message}).") from None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"cron: {text!r} is not a valid cron expression ({exc}).") from None
    return CronSchedule(expr=text, fields=fields)


def validate_cron(expr: str) -> str:
    """Validate the ``cron`` field of a snapshot: ``""`` (no schedule) or a valid expression. Returns the trimmed
    expression; raises ``ValueError("cron: ...")``."""
    if isinstance(expr, str) and not expr.strip():
        return ""
    return parse_cron(expr).expr


def due_runs(
    cron: CronSchedule | str, last_run: datetime | None, created: datetime, now: datetime
) -> datetime | None:
    """The slot to take a run for now, or ``None`` (see the module docstring).

    The answer is the latest slot ``s`` with ``s <= now`` and ``s > max(created, last_run)``."""
    schedule = cron if isinstance(cron, CronSchedule) else parse_cron(cron)
    now = _utc(now, "now")
    baseline = _utc(created, "created")
    if last_run is not None:
        baseline = max(baseline, _utc(last_run, "last_run"))
    if now <= baseline:
        return None
    slot = schedule.latest_at_or_before(now)
    return slot if slot > baseline else None


due_run = due_runs
"""Alias of :func:`due_runs` (which, despite its name, returns a single slot or ``None``, never a list)."""


def next_run_after(cron: CronSchedule | str, after: datetime) -> datetime:
    """When the scheduler should look again: the first slot strictly after ``after``."""
    schedule = cron if isinstance(cron, CronSchedule) else parse_cron(cron)
    return schedule.next_after(after)


# ------------------------------------------------------------------------------------------- retention


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """A parsed retention policy; both ``None`` means keep everything."""

    keep_last: int | None = None
    max_age: timedelta | None = None

    @property
    def keeps_all(self) -> bool:
        return self.keep_last is None and self.max_age is None

    def __str__(self) -> str:
        """The canonical text form (rules in a fixed order; durations as written in their largest exact unit)."""
        rules = []
        if self.keep_last is not None:
            rules.append(f"keep_last={self.keep_last}")
        if self.max_age is not None:
            rules.append(f"max_age={_format_duration(self.max_age)}")
        return ",".join(rules)


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_retention_policy(text: str) -> RetentionPolicy:
    """Parse a retention policy (syntax in the module docstring); ``ValueError("retention_policy: ...")``."""
    if not isinstance(text, str):
        raise ValueError("retention_policy: must be a string.")
    if not text.strip():
        return RetentionPolicy()
    values: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(
                f"retention_policy: {text!r} has an empty rule (two commas, or a trailing comma)."
            )
        match = _RULE_RE.match(item)
        if match is None:
            raise ValueError(
                f"retention_policy: rule {item!r} must look like key=value "
                "(e.g. 'keep_last=7' or 'max_age=30d')."
            )
        key, value = match.groups()
        if key not in ("keep_last", "max_age"):
            raise ValueError(f"retention_policy: unknown rule {key!r}; the rules are keep_last and max_age.")
        if key in values:
            raise ValueError(f"retention_policy: rule {key!r} is given more than once.")
        values[key] = value
    keep_last = None
    if "keep_last" in values:
        value = values["keep_last"]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"retention_policy: keep_last must be a whole number >= 1, not {value!r}.")
        keep_last = int(value)
    max_age = None
    if "max_age" in values:
        value = values["max_age"]
        match = _DURATION_RE.match(value)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(
                f"retention_policy: max_age must be a whole number >= 1 followed by a unit s, m, h, d or w "
                f"(e.g. '30d'), not {value!r}."
            )
        max_age = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
        if max_age > timedelta(days=365 * 1000):
            raise ValueError(f"retention_policy: max_age {value!r} is unreasonably long.")
    return RetentionPolicy(keep_last=keep_last, max_age=max_age)


def validate_retention_policy(text: str) -> str:
    """Validate the ``retention_policy`` field; returns its canonical form (``""`` keeps all)."""
    return str(parse_retention_policy(text))


def select_to_prune(
    runs: Sequence[tuple[Hashable, datetime]], policy: RetentionPolicy | str, now: datetime
) -> list[Hashable]:
    """The ids of the runs to delete under ``policy`` at ``now``, oldest first (semantics in the module
    docstring). ``runs`` is ``[(run_id, taken_at), ...]`` in any order; run ids must be unique."""
    rules = policy if isinstance(policy, RetentionPolicy) else parse_retention_policy(policy)
    if rules.keeps_all or len(runs) <= 1:
        return []
    now = _utc(now, "now")
    ids = [run_id for run_id, _ in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("runs: run ids must be unique.")
    items = [(_utc(taken, "taken_at"), run_id) for run_id, taken in runs]
    try:
        ordered = sorted(items, reverse=True)
    except TypeError:  # run ids that do not compare with each other: break ties by their text
        ordered = sorted(items, reverse=True, key=lambda item: (item[0], str(item[1])))
    prune: list[tuple[datetime, Hashable]] = []
    for rank, (taken, run_id) in enumerate(ordered):
        if rank == 0:
            continue  # the newest run is always kept
        if rules.keep_last is not None and rank < rules.keep_last:
            continue
        if rules.max_age is not None and max(now - taken, timedelta(0)) <= rules.max_age:
            continue
        prune.append((taken, run_id))
    return [run_id for _, run_id in reversed(prune)]
