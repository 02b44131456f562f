"""``domain.reconcile.decide``: one test (or a few) per rule of its module docstring. Pure: no containers, no
database, no clock (the times are given)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openpods.domain import status as st
from openpods.domain.reconcile import ContainerFacts, Decision, PodFacts, decide, recheck_at

NOW = datetime(2026, 3, 1, 12, 0, 0)  # naive UTC, like the stored timestamps
DEADLINE = timedelta(seconds=180)
LISTED_AT = NOW - timedelta(milliseconds=50)  # the list call of this pass
LONG_AGO = NOW - timedelta(hours=1)  # set well before the list call, and past the deadline
RECENTLY = NOW - timedelta(seconds=10)  # before the list call, within the deadline
AFTER_LIST = NOW - timedelta(milliseconds=10)  # set after the list call (the list may not show it yet)
INSTANCE = "inst-current"


def pod(status: str, requested: str = st.ON, *, since: datetime = RECENTLY, **kw: Any) -> PodFacts:
    values: dict[str, Any] = {
        "status": status,
        "status_requested": requested,
        "status_since": since,
        "instance_id": INSTANCE,
        "start_instance_ts": None,
        "time_to_stop_default": 43200,
        "time_to_stop_instance": None,
        "time_to_stop_ts": None,
    }
    values.update(kw)
    return PodFacts(**values)


def container(
    state: str = "running",
    *,
    instance: str = INSTANCE,
    exit_code: int | None = None,
    started_at: datetime | None = None,
    message: str = "",
) -> ContainerFacts:
    return ContainerFacts(
        state=state, instance_id=instance, exit_code=exit_code, started_at=started_at, message=message
    )


def run(
    p: PodFacts,
    c: ContainerFacts | None,
    *,
    now: datetime = NOW,
    listed_at: datetime = LISTED_AT,
    runtime_problem: str = "",
) -> Decision:
    return decide(p, c, now=now, listed_at=listed_at, deadline=DEADLINE, runtime_problem=runtime_problem)


# ------------------------------------------------------------------------------------------------ OFF / RESTART


@pytest.mark.parametrize("requested", [st.OFF, st.RESTART])
@pytest.mark.parametrize("status", [st.AVAILABLE, st.CREATING, st.REQUESTED, st.ERROR, st.COMPLETE])
def test_off_or_restart_with_a_container_goes_deleting_and_removes_it(status: str, requested: str) -> None:
    d = run(pod(status, requested), container())
    assert d.status == st.DELETING
    assert d.remove_container is True
    assert "DELETING" in d.log
    assert d.status_requested is None  # RESTART stays RESTART until the container is gone
    assert not d.wake_spawner and not d.new_instance


def test_off_while_deleting_keeps_removing_without_a_new_status() -> None:
    d = run(pod(st.DELETING, st.OFF), container())
    assert d.remove_container is True
    assert d.status is None


def test_off_with_an_exited_container_captures_its_logs_before_removal() -> None:
    d = run(pod(st.AVAILABLE, st.OFF), container("exited", exit_code=137))
    assert d.capture_logs is True
    assert d.remove_container is True


@pytest.mark.parametrize(
    "status", [st.DELETING, st.AVAILABLE, st.CREATING, st.REQUESTED, st.ERROR, st.COMPLETE]
)
def test_off_without_a_container_is_stopped_with_instance_fields_cleared(status: str) -> None:
    d = run(pod(status, st.OFF), None)
    assert d.status == st.STOPPED
    assert d.clear_instance is True
    assert d.remove_container is False
    assert d.status_requested is None
    assert not d.wake_spawner and not d.new_instance
    assert "STOPPED" in d.log


def test_off_and_already_stopped_is_a_noop() -> None:
    assert run(pod(st.STOPPED, st.OFF, since=LONG_AGO), None).is_noop()


def test_off_during_spawner_setup_waits_for_the_spawner_until_the_deadline() -> None:
    assert run(pod(st.SPAWNER_SETUP, st.OFF, since=RECENTLY), None).is_noop()
    d = run(pod(st.SPAWNER_SETUP, st.OFF, since=LONG_AGO), None)
    assert d.status == st.STOPPED and d.clear_instance


@pytest.mark.parametrize("status", [st.DELETING, st.AVAILABLE, st.STOPPED, st.ERROR])
def test_restart_without_a_container_becomes_on_and_requested_with_a_new_instance(status: str) -> None:
    d = run(pod(status, st.RESTART), None)
    assert d.status_requested == st.ON
    assert d.status == st.REQUESTED
    assert d.new_instance is True
    assert d.clear_instance is True
    assert d.wake_spawner is True
    assert d.remove_container is False


# ------------------------------------------------------------------------------------------------ ON: requests


def test_on_and_stopped_is_requested_again_with_a_new_instance() -> None:
    d = run(pod(st.STOPPED, since=LONG_AGO), None)
    assert d.status == st.REQUESTED
    assert d.new_instance is True
    assert d.wake_spawner is True
    assert "REQUESTED" in d.log


def test_requested_within_the_deadline_is_left_to_the_spawner() -> None:
    assert run(pod(st.REQUESTED, since=RECENTLY), None).is_noop()


def test_requested_past_the_deadline_wakes_the_spawner_again() -> None:
    d = run(pod(st.REQUESTED, since=LONG_AGO), None)
    assert d.wake_spawner is True
    assert d.status is None  # still REQUESTED: the spawner claims it


def test_requested_without_a_runtime_shows_the_reason() -> None:
    problem = "No container engine: install podman."
    d = run(pod(st.REQUESTED, since=RECENTLY), None, runtime_problem=problem)
    assert d.status_container == {"phase": "Pending", "start_time": None, "message": problem}
    assert d.status is None


def test_spawner_setup_within_the_deadline_is_left_alone() -> None:
    assert run(pod(st.SPAWNER_SETUP, since=RECENTLY), None).is_noop()
    assert run(pod(st.SPAWNER_SETUP, since=RECENTLY), container()).is_noop()


def test_spawner_setup_past_the_deadline_is_requested_again() -> None:
    d = run(pod(st.SPAWNER_SETUP, since=LONG_AGO), None)
    assert d.status == st.REQUESTED
    assert d.wake_spawner is True
    assert (d.remove_container, d.new_instance) == (False, False)
    assert "SPAWNER SETUP" in d.log


def test_spawner_setup_past_the_deadline_with_its_running_container_starts_afresh() -> None:
    """A spawner killed while it started the container (before it marked the pod CREATING) leaves the pod in
    SPAWNER SETUP with a running container of the current instance. The rule is unconditional ("SPAWNER SETUP
    past the deadline (a spawner died mid-way) → REQUESTED again"): nothing else ever moves such a pod, the
    spawner only claims REQUESTED pods. The container is not adopted: no live spawner saw its start succeed (the
    engine may have carried out a start whose client died only in part), so it is removed and a new instance
    begins."""
    d = run(pod(st.SPAWNER_SETUP, since=LONG_AGO), container("running"))
    assert d.status == st.REQUESTED, f"pod stays stuck in SPAWNER SETUP: {d}"
    assert d.wake_spawner is True
    assert d.remove_container is True
    assert d.new_instance is True  # a late answer of the old spawner (same instance) is moot


def test_spawner_setup_past_the_deadline_with_its_created_container_is_requested_again() -> None:
    """Killed after the create, before the start: the next spawner adopts the container and starts it itself (a
    slow spawner's container is caught here most of the time, and must not be replaced over and over)."""
    d = run(pod(st.SPAWNER_SETUP, since=LONG_AGO), container("created"))
    assert d.status == st.REQUESTED, f"pod stays stuck in SPAWNER SETUP: {d}"
    assert d.wake_spawner is True
    assert (d.remove_container, d.new_instance) == (False, False)


def test_spawner_setup_past_the_deadline_with_an_earlier_instances_container_is_requested_again() -> None:
    """The spawner died while replacing the previous instance's container: that container is removed and the pod
    re-driven, instead of waiting forever for a replacement that nobody is making."""
    d = run(pod(st.SPAWNER_SETUP, since=LONG_AGO), container(instance="inst-old"))
    assert d.status == st.REQUESTED, f"pod stays stuck in SPAWNER SETUP: {d}"
    assert d.remove_container is True
    assert d.wake_spawner is True


# ------------------------------------------------------------------------------------------------ ON: running


@pytest.mark.parametrize("status", [st.CREATING, st.AVAILABLE])
def test_a_running_container_makes_the_pod_available(status: str) -> None:
    started = datetime(2026, 3, 1, 11, 59, 58, tzinfo=UTC)
    d = run(pod(status), container("running", started_at=started))
    assert d.status == st.AVAILABLE
    assert d.start_instance_ts == started.replace(tzinfo=None)
    assert d.status_container is not None
    assert d.status_container["phase"] == "Running"
    assert d.status_container["start_time"] == "2026-03-01T11:59:58"
    assert d.log == "health set status to AVAILABLE"
    # time_to_stop_ts = start + time_to_stop_default
    assert d.time_to_stop_ts == started.replace(tzinfo=None) + timedelta(seconds=43200)
    assert d.status_requested is None


def test_start_instance_ts_is_now_when_the_engine_does_not_say() -> None:
    d = run(pod(st.CREATING), container("running", started_at=None))
    assert d.start_instance_ts == NOW
    assert d.time_to_stop_ts == NOW + timedelta(seconds=43200)


def test_start_instance_ts_is_set_only_the_first_time() -> None:
    start = NOW - timedelta(minutes=5)
    deadline_ts = start + timedelta(seconds=43200)
    p = pod(st.AVAILABLE, since=LONG_AGO, start_instance_ts=start, time_to_stop_ts=deadline_ts)
    d = run(p, container("running", started_at=datetime(2026, 3, 1, 11, 58, tzinfo=UTC)))
    assert d.is_noop(), d  # steady state: nothing to write


def test_time_to_stop_instance_wins_over_the_default_and_is_recomputed() -> None:
    start = NOW - timedelta(minutes=5)
    p = pod(
        st.AVAILABLE,
        since=LONG_AGO,
        start_instance_ts=start,
        time_to_stop_instance=3600,
        time_to_stop_ts=start + timedelta(seconds=43200),
    )
    d = run(p, container())
    assert d.time_to_stop_ts == start + timedelta(seconds=3600)
    assert d.status is None and d.status_requested is None


def test_unlimited_time_to_stop_has_no_deadline() -> None:
    p = pod(st.CREATING, time_to_stop_default=-1)
    d = run(p, container())
    assert d.status == st.AVAILABLE
    assert d.time_to_stop_ts is False  # unchanged: it was None and stays None
    p = pod(st.AVAILABLE, since=LONG_AGO, start_instance_ts=NOW - timedelta(days=30), time_to_stop_default=-1)
    assert run(p, container()).status_requested is None


@pytest.mark.parametrize("past", [timedelta(0), timedelta(seconds=1), timedelta(days=1)])
def test_past_time_to_stop_sets_the_pod_off(past: timedelta) -> None:
    start = NOW - timedelta(seconds=300) - past
    p = pod(
        st.AVAILABLE,
        since=LONG_AGO,
        start_instance_ts=start,
        time_to_stop_instance=300,
        time_to_stop_ts=start + timedelta(seconds=300),
    )
    d = run(p, container())
    assert d.status_requested == st.OFF
    assert "time_to_stop" in d.log
    assert d.remove_container is False  # the next pass (OFF) removes it, through DELETING


def test_before_time_to_stop_nothing_happens() -> None:
    start = NOW - timedelta(seconds=299)
    p = pod(
        st.AVAILABLE,
        since=LONG_AGO,
        start_instance_ts=start,
        time_to_stop_instance=300,
        time_to_stop_ts=start + timedelta(seconds=300),
    )
    assert run(p, container()).is_noop()


# ------------------------------------------------------------------------------------------------ ON: exits


@pytest.mark.parametrize("status", [st.CREATING, st.AVAILABLE])
def test_exit_code_zero_is_complete_with_logs_captured(status: str) -> None:
    d = run(pod(status), container("exited", exit_code=0))
    assert d.status == st.COMPLETE
    assert d.capture_logs is True
    assert d.status_container is not None and d.status_container["phase"] == "Succeeded"
    assert d.remove_container is False  # kept for inspection until stop


@pytest.mark.parametrize("code", [1, 2, 137])
@pytest.mark.parametrize("status", [st.CREATING, st.AVAILABLE])
def test_non_zero_exit_is_error_with_the_exit_code(status: str, code: int) -> None:
    d = run(pod(status), container("exited", exit_code=code, message="OOMKilled" if code == 137 else ""))
    assert d.status == st.ERROR
    assert d.capture_logs is True
    assert d.status_container is not None
    assert d.status_container["phase"] == "Failed"
    assert f"code {code}" in d.status_container["message"]
    assert f"code {code}" in d.log
    if code == 137:
        assert "OOMKilled" in d.status_container["message"]


def test_unknown_exit_code_is_an_error_too() -> None:
    d = run(pod(st.AVAILABLE), container("exited", exit_code=None))
    assert d.status == st.ERROR
    assert "unknown" in d.status_container["message"]  # type: ignore[index]


@pytest.mark.parametrize("status", [st.ERROR, st.COMPLETE])
def test_finished_pods_are_final_for_their_instance(status: str) -> None:
    """Logs are captured once: not again on later passes, and the container is not restarted."""
    assert run(pod(status, since=LONG_AGO), container("exited", exit_code=1)).is_noop()
    assert run(pod(status, since=LONG_AGO), None).is_noop()


# ------------------------------------------------------------------------------------------------ ON: vanished


@pytest.mark.parametrize("status", [st.CREATING, st.AVAILABLE])
def test_a_vanished_container_makes_the_pod_stopped(status: str) -> None:
    d = run(pod(status, since=RECENTLY), None)
    assert d.status == st.STOPPED
    assert d.clear_instance is True
    assert "no container" in d.log
    # ... which the "ON and STOPPED" rule then turns into a fresh REQUESTED:
    after = run(pod(st.STOPPED, since=NOW), None, now=NOW + timedelta(seconds=1), listed_at=NOW)
    assert after.status == st.REQUESTED and after.new_instance and after.wake_spawner


@pytest.mark.parametrize("status", [st.CREATING, st.AVAILABLE, st.DELETING])
def test_no_container_is_not_trusted_for_a_status_set_after_the_list_call(status: str) -> None:
    assert run(pod(status, since=AFTER_LIST), None).is_noop()


def test_deleting_while_on_finishes_the_removal_first() -> None:
    d = run(pod(st.DELETING), container())
    assert d.remove_container is True
    assert d.status is None
    d = run(pod(st.DELETING), None)
    assert d.status == st.STOPPED and d.clear_instance
    # ... and then ON + STOPPED starts it again.
    assert run(pod(st.STOPPED, since=LONG_AGO), None).status == st.REQUESTED


# ------------------------------------------------------------------------------------------------ stale / stuck


@pytest.mark.parametrize(
    "status", [st.CREATING, st.AVAILABLE, st.REQUESTED, st.STOPPED, st.ERROR, st.COMPLETE]
)
def test_a_container_of_an_earlier_instance_is_removed(status: str) -> None:
    """... and the other rules then see "no container"."""
    p = pod(status, since=LONG_AGO)
    d = run(p, container(instance="inst-old"))
    assert d.remove_container is True
    as_if_none = run(p, None)
    assert (d.status, d.clear_instance, d.new_instance, d.wake_spawner) == (
        as_if_none.status,
        as_if_none.clear_instance,
        as_if_none.new_instance,
        as_if_none.wake_spawner,
    )
    assert d.log == (as_if_none.log or "health removed a container of an earlier instance")


def test_a_stale_container_is_kept_while_the_spawner_replaces_it() -> None:
    d = run(pod(st.SPAWNER_SETUP, since=RECENTLY), container(instance="inst-old"))
    assert d.remove_container is False
    assert d.is_noop()


def test_a_stale_container_listed_before_the_spawner_replaced_it_is_not_removed() -> None:
    """The list call saw the previous instance's container; the spawner then replaced it (same deterministic
    name) and marked the pod CREATING before the pods were read. Removing "the stale container" now removes the
    NEW container by its name. The listed state predates the pod's status, so it must not be acted on (as the
    rule for "no container" already does)."""
    d = run(pod(st.CREATING, since=AFTER_LIST), container(instance="inst-old"))
    assert d.remove_container is False, d


@pytest.mark.parametrize("state", ["created", "unknown"])
def test_a_container_that_never_runs_is_redriven_after_the_deadline(state: str) -> None:
    assert run(pod(st.CREATING, since=RECENTLY), container(state)).is_noop()
    d = run(pod(st.CREATING, since=LONG_AGO), container(state, message="engine state 'paused'"))
    assert d.remove_container is True
    assert d.status == st.REQUESTED
    assert d.wake_spawner is True
    assert state in d.log


# ------------------------------------------------------------------------------------------------ purity


def test_decide_is_pure_and_deterministic() -> None:
    p = pod(st.AVAILABLE, since=LONG_AGO, start_instance_ts=NOW - timedelta(minutes=1))
    c = container()
    before = (dataclasses.asdict(p), dataclasses.asdict(c))
    assert run(p, c) == run(p, c)
    assert (dataclasses.asdict(p), dataclasses.asdict(c)) == before


@pytest.mark.parametrize("status", st.ALL)
@pytest.mark.parametrize("requested", [st.ON, st.OFF, st.RESTART])
@pytest.mark.parametrize(
    "c",
    [
        None,
        container(),
        container("exited", exit_code=0),
        container("created"),
        container(instance="inst-old"),
    ],
)
def test_every_decision_is_consistent(status: str, requested: str, c: ContainerFacts | None) -> None:
    """Over every status x request x container: a decision never both keeps a pod ON and stops it, a new
    instance always goes with REQUESTED, and statuses are Tapis values."""
    for since in (RECENTLY, LONG_AGO, AFTER_LIST):
        d = run(pod(status, requested, since=since), c)
        assert d.status is None or d.status in st.ALL
        assert d.status_requested in (None, st.ON, st.OFF)
        if d.new_instance:
            assert d.status == st.REQUESTED
        if d.wake_spawner:
            assert d.status in (None, st.REQUESTED)
        if d.clear_instance:
            assert d.status in (st.STOPPED, st.REQUESTED)
        if not d.is_noop() and d.status:
            assert d.log


# ------------------------------------------------------------------------------------------- recheck_at
# The health loop skips a pod whose row and container did not change until recheck_at(...). That is only
# correct if decide() answers "nothing to do" at every moment before then: checked over a grid of cases.

def _effectively_noop(d: Decision) -> bool:
    return d == Decision(status_container=d.status_container)


@pytest.mark.parametrize("status", st.ALL)
@pytest.mark.parametrize("requested", [st.ON, st.OFF, st.RESTART])
@pytest.mark.parametrize("cstate", [None, "running", "created", "exited", "unknown"])
@pytest.mark.parametrize("since", [LONG_AGO, RECENTLY, NOW - timedelta(seconds=179), AFTER_LIST])
@pytest.mark.parametrize("ttl", [None, 30, 600])
def test_decide_answers_nothing_to_do_until_recheck_at(status: str, requested: str, cstate: str | None,
                                                        since: datetime, ttl: int | None) -> None:
    start = since if cstate == "running" else None
    ttl_ts = start + timedelta(seconds=ttl) if start is not None and ttl is not None else None
    p = pod(status, requested, since=since, start_instance_ts=start, time_to_stop_default=ttl or -1,
            time_to_stop_ts=ttl_ts)
    c = container(cstate, started_at=since.replace(tzinfo=UTC)) if cstate else None
    first = run(p, c)
    if not _effectively_noop(first):
        return  # the loop acts, and decides again next pass
    until = recheck_at(p, listed_at=LISTED_AT, now=NOW, deadline=DEADLINE)
    horizon = until if until is not None else NOW + timedelta(days=3)
    # Later passes: time moves on, and each list call comes just before its pass.
    later = NOW + timedelta(milliseconds=1)
    while later < horizon:
        d = run(p, c, now=later, listed_at=later - timedelta(milliseconds=50))
        assert _effectively_noop(d) and d.status_container == first.status_container, (later, d)
        later += max((horizon - NOW) / 50, timedelta(milliseconds=1))
    if until is not None and until > NOW:
        # ... and the answer may differ right after it (not required: recheck_at may be early).
        run(p, c, now=until + timedelta(seconds=1), listed_at=until)


def test_an_exit_is_judged_only_once_it_has_settled() -> None:
    """``docker rm -f`` kills the container (137) and removes it a moment later: seen in between it must not be
    an ERROR (final); once it is gone the pod is started again. A real crash is judged EXIT_SETTLE later."""
    from openpods.domain.reconcile import EXIT_SETTLE

    just_now = (LISTED_AT - timedelta(milliseconds=200)).replace(tzinfo=UTC)
    killed = dataclasses.replace(container("exited", exit_code=137), finished_at=just_now)
    p = pod(st.AVAILABLE)
    assert run(p, killed).is_noop()
    settles = just_now.replace(tzinfo=None) + EXIT_SETTLE
    assert recheck_at(p, listed_at=LISTED_AT, now=NOW, deadline=DEADLINE, container=killed) == settles
    # looked at again after it settled (even if the pass that waited ended later than that)
    late = settles + timedelta(seconds=5)
    assert recheck_at(p, listed_at=LISTED_AT, now=late, deadline=DEADLINE, container=killed) == late
    # removed meanwhile: no container, the pod is stopped (and, being ON, started again)
    assert run(p, None).status == st.STOPPED
    # still there once settled: a crash
    d = run(p, killed, now=settles + timedelta(seconds=1), listed_at=settles)
    assert d.status == st.ERROR and d.capture_logs
