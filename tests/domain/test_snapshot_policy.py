"""openpods.domain.snapshot_policy: cron schedules, due runs, retention pruning. Pure; no clock is read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from openpods.domain.snapshot_policy import (
    CronSchedule,
    RetentionPolicy,
    due_run,
    due_runs,
    next_run_after,
    parse_cron,
    parse_retention_policy,
    select_to_prune,
    validate_cron,
    validate_retention_policy,
)


def t(
    day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 1, year: int = 2025
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# ------------------------------------------------------------------------------------------- cron parsing


@pytest.mark.parametrize(
    ("expr", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
        ("  @hourly  ", "0 * * * *"),
        ("*/15 * * * *", "*/15 * * * *"),
        ("0   3 * *   *", "0 3 * * *"),
        ("30 2 * * MON-FRI", "30 2 * * MON-FRI"),
        ("0 0 1,15 * *", "0 0 1,15 * *"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 * * 1#2", "0 0 * * 1#2"),
        ("0 0 29 2 *", "0 0 29 2 *"),  # leap days only, but it does fire
    ],
)
def test_parse_cron_ok(expr: str, fields: str) -> None:
    schedule = parse_cron(expr)
    assert isinstance(schedule, CronSchedule)
    assert schedule.fields == fields
    assert schedule.expr == expr.strip()


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "4 field"),
        ("* * * * * *", "6 field"),  # seconds are not a thing here
        ("* * * * * * *", "7 field"),
        ("@reboot", "unknown alias"),
        ("@every 5m", "unknown alias"),
        ("61 * * * *", "not a valid"),
        ("* 24 * * *", "not a valid"),
        ("* * 32 * *", "not a valid"),
        ("* * * 13 *", "not a valid"),
        ("* * * * 8", "not a valid"),
        ("*/0 * * * *", "not a valid"),
        ("x y z a b", "not a valid"),
        ("H * * * *", "not valid cron syntax"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 31 4 *", "never matches"),
        ("0; rm -rf / * * * *", "field"),
    ],
)
def test_parse_cron_rejects(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cron(expr)
    message = str(info.value)
    assert message.startswith("cron: ")
    assert fragment in message


def test_validate_cron() -> None:
    assert validate_cron("") == ""
    assert validate_cron("  ") == ""
    assert validate_cron(" 0 3 * * * ") == "0 3 * * *"
    assert validate_cron("@daily") == "@daily"
    with pytest.raises(ValueError, match=r"^cron: "):
        validate_cron("every day")


def test_schedule_slots() -> None:
    hourly = parse_cron("@hourly")
    assert hourly.latest_at_or_before(t(1, 12)) == t(1, 12)  # a slot exactly at `at` counts
    assert hourly.latest_at_or_before(t(1, 12, 59, 59)) == t(1, 12)
    assert hourly.next_after(t(1, 12)) == t(1, 13)  # strictly after
    assert next_run_after("0 3 * * *", t(1, 3, 0, 1)) == t(2, 3)
    assert parse_cron("@weekly").latest_at_or_before(t(8)) == t(5)  # 2025-01-05 is a Sunday


# ------------------------------------------------------------------------------------------- due runs


def test_not_due_before_first_slot() -> None:
    created = t(1, 10, 15)
    assert due_runs("@hourly", None, created, t(1, 10, 59)) is None
    assert due_runs("@hourly", None, created, t(1, 11)) == t(1, 11)
    assert due_runs("@hourly", None, created, t(1, 11, 0, 30)) == t(1, 11)


def test_created_exactly_on_a_slot_does_not_run_for_it() -> None:
    assert due_runs("@hourly", None, t(1, 10), t(1, 10)) is None
    assert due_runs("@hourly", None, t(1, 10), t(1, 10, 30)) is None
    assert due_runs("@hourly", None, t(1, 10), t(1, 11)) == t(1, 11)


def test_no_double_run_for_one_slot() -> None:
    created = t(1, 9, 30)
    slot = due_runs("@hourly", None, created, t(1, 10, 0, 5))
    assert slot == t(1, 10)
    # recorded as the slot ...
    assert due_runs("@hourly", slot, created, t(1, 10, 0, 6)) is None
    assert due_runs("@hourly", slot, created, t(1, 10, 59, 59)) is None
    # ... or as the time the copy finished: the same
    assert due_runs("@hourly", t(1, 10, 3), created, t(1, 10, 30)) is None
    assert due_runs("@hourly", slot, created, t(1, 11)) == t(1, 11)


def test_long_outage_takes_one_catch_up_run() -> None:
    created = t(1)
    last = t(1, 5)
    now = t(4, 17, 42)  # three days down: ~84 slots missed
    slot = due_runs("@hourly", last, created, now)
    assert slot == t(4, 17)  # only the latest missed slot
    assert due_runs("@hourly", slot, created, now) is None
    assert due_runs("@hourly", slot, created, t(4, 18)) == t(4, 18)


def test_clock_stepping_back_never_runs() -> None:
    assert due_runs("@hourly", t(2, 10), t(1), t(2, 9, 30)) is None
    assert due_runs("@hourly", t(2, 10), t(1), t(1)) is None
    assert due_runs("@hourly", None, t(2), t(1, 23)) is None  # now before creation


def test_time_zones_and_naive_datetimes() -> None:
    plus2 = timezone(timedelta(hours=2))
    created = datetime(2025, 1, 1, 11, 30, tzinfo=plus2)  # 09:30 UTC
    now = datetime(2025, 1, 1, 12, 5, tzinfo=plus2)  # 10:05 UTC
    slot = due_runs("@hourly", None, created, now)
    assert slot == t(1, 10) and slot.tzinfo is UTC
    # naive means UTC (what SQLite returns)
    assert due_runs("0 3 * * *", None, datetime(2025, 1, 1), datetime(2025, 1, 2, 3, 1)) == t(2, 3)


def test_due_run_alias_and_schedule_object() -> None:
    schedule = parse_cron("*/10 * * * *")
    assert due_run is due_runs
    assert due_runs(schedule, None, t(1, 0, 1), t(1, 0, 25)) == t(1, 0, 20)
    with pytest.raises(ValueError, match=r"^cron: "):
        due_runs("nonsense", None, t(1), t(2))


def test_scheduler_loop_with_restarts_takes_every_slot_once() -> None:
    """A scheduler polling every 7 minutes for two days, restarted now and then (losing everything but the
    database), and down for 5 hours once. It claims a slot in the database before copying, as the module
    docstring says, so a crash mid-copy resumes that run instead of starting another."""
    created = t(1, 0, 3)
    db_slots: list[datetime] = []  # unique (snapshot, slot) rows: all that survives a restart
    now = created
    while True:
        now += timedelta(minutes=7)
        if now >= t(3):
            break
        if t(1, 20) <= now < t(2, 1):
            continue  # outage
        last_run = max(db_slots) if db_slots else None  # a fresh process reads it back
        slot = due_runs("@hourly", last_run, created, now)
        if slot is None:
            continue
        assert slot not in db_slots
        db_slots.append(slot)  # claim, then copy; a restart here changes nothing
    # every hourly slot outside the outage, plus exactly one catch-up (01:00 of day 2) for the 5 missed ones
    expected = [t(1, h) for h in range(1, 20)] + [t(2, h) for h in range(1, 24)]
    assert db_slots == expected


# ------------------------------------------------------------------------------------------- retention parsing


@pytest.mark.parametrize(
    ("text", "keep_last", "max_age", "canonical"),
    [
        ("", None, None, ""),
        ("   ", None, None, ""),
        ("keep_last=7", 7, None, "keep_last=7"),
        ("max_age=30d", None, timedelta(days=30), "max_age=30d"),
        ("keep_last=7,max_age=30d", 7, timedelta(days=30), "keep_last=7,max_age=30d"),
        (" max_age = 2w , keep_last = 3 ", 3, timedelta(weeks=2), "keep_last=3,max_age=2w"),
        ("max_age=90s", None, timedelta(seconds=90), "max_age=90s"),
        ("max_age=120m", None, timedelta(hours=2), "max_age=2h"),
        ("max_age=48h", None, timedelta(days=2), "max_age=2d"),
        ("keep_last=1", 1, None, "keep_last=1"),
    ],
)
def test_parse_retention_ok(
    text: str, keep_last: int | None, max_age: timedelta | None, canonical: str
) -> None:
    policy = parse_retention_policy(text)
    assert policy == RetentionPolicy(keep_last=keep_last, max_age=max_age)
    assert validate_retention_policy(text) == canonical
    assert parse_retention_policy(canonical) == policy


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("keep_last", "key=value"),
        ("keep_last=", "key=value"),
        ("keep_last=0", "keep_last must be a whole number >= 1"),
        ("keep_last=-1", "keep_last must be"),
        ("keep_last=7.5", "keep_last must be"),
        ("keep_last=seven", "keep_last must be"),
        ("max_age=30", "max_age must be"),
        ("max_age=30y", "max_age must be"),
        ("max_age=0d", "max_age must be"),
        ("max_age=-1d", "max_age must be"),
        ("max_age=1.5d", "max_age must be"),
        ("max_age=99999999w", "unreasonably long"),
        ("keep=7", "unknown rule 'keep'"),
        ("KEEP_LAST=7", "key=value"),
        ("keep_last=7,keep_last=8", "more than once"),
        ("keep_last=7,", "empty rule"),
        ("keep_last=7,,max_age=1d", "empty rule"),
        ("keep_last=7;max_age=1d", "keep_last must be"),
    ],
)
def test_parse_retention_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_retention_policy(text)
    assert str(info.value).startswith("retention_policy: ")
    assert fragment in str(info.value)


# ------------------------------------------------------------------------------------------- pruning

NOW = t(31)


def daily_runs(n: int) -> list[tuple[str, datetime]]:
    """run0 is the newest (yesterday), runN-1 the oldest."""
    return [(f"run{i}", NOW - timedelta(days=i + 1)) for i in range(n)]


def test_empty_policy_keeps_all() -> None:
    assert select_to_prune(daily_runs(20), "", NOW) == []
    assert select_to_prune(daily_runs(20), RetentionPolicy(), NOW) == []
    assert select_to_prune([], "keep_last=1", NOW) == []


def test_keep_last_only() -> None:
    pruned = select_to_prune(daily_runs(10), "keep_last=3", NOW)
    assert pruned == [f"run{i}" for i in range(9, 2, -1)]  # oldest first
    assert select_to_prune(daily_runs(3), "keep_last=3", NOW) == []
    assert select_to_prune(daily_runs(3), "keep_last=5", NOW) == []


def test_max_age_only() -> None:
    runs = daily_runs(10)  # ages 1..10 days
    assert select_to_prune(runs, "max_age=7d", NOW) == ["run9", "run8", "run7"]  # ages 10, 9, 8
    # exactly max_age old is kept
    assert "run6" not in select_to_prune(runs, "max_age=7d", NOW)


def test_newest_is_always_kept() -> None:
    old = [("a", t(1, month=1, year=2020)), ("b", t(2, month=1, year=2020)), ("c", t(3, month=1, year=2020))]
    assert select_to_prune(old, "max_age=1d", NOW) == ["a", "b"]
    assert select_to_prune(old[:1], "max_age=1s", NOW) == []


def test_both_rules_keep_the_union() -> None:
    runs = daily_runs(40)
    # keep the 7 newest, plus everything from the last 30 days: run0..run29 survive (ages 1..30)
    pruned = select_to_prune(runs, "keep_last=7,max_age=30d", NOW)
    assert pruned == [f"run{i}" for i in range(39, 29, -1)]
    # with a short max_age, keep_last is what keeps them
    pruned = select_to_prune(runs, "keep_last=7,max_age=2d", NOW)
    assert pruned == [f"run{i}" for i in range(39, 6, -1)]


def test_input_order_ties_and_future_runs() -> None:
    runs = [("x", NOW - timedelta(days=5)), ("z", NOW + timedelta(hours=1)), ("y", NOW - timedelta(days=5))]
    # newest first: z (future: age 0), then y/x tied at -5d, larger id first -> y, x
    assert select_to_prune(runs, "keep_last=2", NOW) == ["x"]
    assert select_to_prune(runs, "max_age=1d", NOW) == ["x", "y"]
    assert select_to_prune([(2, NOW), (10, NOW), (1, NOW)], "keep_last=1", NOW) == [1, 2]


def test_naive_times_are_utc_and_ids_unique() -> None:
    runs = [("a", datetime(2025, 1, 1)), ("b", datetime(2025, 1, 20))]
    assert select_to_prune(runs, "max_age=5d", datetime(2025, 1, 21)) == ["a"]
    with pytest.raises(ValueError, match="unique"):
        select_to_prune([("a", NOW), ("a", NOW - timedelta(days=1))], "keep_last=1", NOW)
    with pytest.raises(ValueError, match=r"^retention_policy: "):
        select_to_prune(daily_runs(3), "keep_last=zero", NOW)


def test_schedule_and_retention_together() -> None:
    """Ten days of a daily schedule with keep_last=3: after each run, prune; three runs remain."""
    created = t(1, 0, 30)
    runs: list[tuple[str, datetime]] = []
    last_run = None
    now = created
    while now < t(11, 12):
        now += timedelta(hours=1)
        slot = due_runs("@daily", last_run, created, now)
        if slot is None:
            continue
        runs.append((f"run-{slot:%d}", slot))
        last_run = slot
        doomed = set(select_to_prune(runs, "keep_last=3", now))
        runs = [r for r in runs if r[0] not in doomed]
    assert [r[0] for r in runs] == ["run-09", "run-10", "run-11"]
