"""The health loop's decision for one pod: a pure function of the desired state (the pod row), what the engine
reported (one list call per pass) and the time. The controller applies the decision; nothing here does I/O.

Rules (Tapis semantics, with its stuck states fixed):

- ``OFF``/``RESTART`` and a container exists → ``DELETING``, remove it; no container → ``STOPPED`` (instance fields
  cleared); ``RESTART`` then becomes ``ON`` and the pod is ``REQUESTED`` again with a new instance.
- ``ON``:
  - ``STOPPED`` → ``REQUESTED`` (new instance; the spawner is woken).
  - ``REQUESTED`` past the deadline → the spawner is woken again (re-drive); with no runtime, the reason is shown.
  - ``SPAWNER SETUP`` past the deadline (a spawner died mid-way) → ``REQUESTED`` again. A *running* container
    it left (a start that no live spawner saw succeed) is removed and a new instance begins; a merely created one
    is adopted and started by the next spawner.
  - ``CREATING``/``AVAILABLE`` with a running container of this instance → ``AVAILABLE`` (``start_instance_ts``
    set the first time), ``time_to_stop_ts`` recomputed, and past it → ``status_requested = OFF``.
  - container exited 0 → ``COMPLETE``; exited non-zero → ``ERROR`` with the exit code; logs captured once.
  - ``CREATING``/``AVAILABLE`` whose container vanished (removed behind our back) → ``STOPPED``, which the next
    rule turns into a fresh ``REQUESTED``.
  - ``DELETING`` (a start while stopping) → finish the removal first.
- A container of another instance than the pod's current one is stale and removed (unless the spawner is
  replacing it right now).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from openpods.domain import status as st
from openpods.domain.pods import time_to_stop_ts


@dataclass(frozen=True)
class PodFacts:
    status: str
    status_requested: str
    status_since: datetime
    instance_id: str
    start_instance_ts: datetime | None
    time_to_stop_default: int | None
    time_to_stop_instance: int | None
    time_to_stop_ts: datetime | None


@dataclass(frozen=True)
class ContainerFacts:
    state: str  # created | running | exited | unknown
    instance_id: str
    exit_code: int | None = None
    started_at: datetime | None = None
    message: str = ""
    finished_at: datetime | None = None  # when it exited (UTC-aware), if the engine said


# An exit is judged only once it is this old: ``docker rm -f`` (or an engine removing a container) kills it
# first and removes it a moment later. Seen in between, a container being removed must not read as a crash
# (ERROR, final) but, once gone, as "no container" (the pod is started again). Real exits wait this long.
EXIT_SETTLE = timedelta(seconds=1)


def _exit_settles_at(container: ContainerFacts | None) -> datetime | None:
    """Naive UTC time from which an exited container's exit is judged (None: at once)."""
    if container is None or container.state != "exited" or container.finished_at is None:
        return None
    finished = container.finished_at
    if finished.tzinfo is not None:
        finished = finished.astimezone(UTC).replace(tzinfo=None)
    return finished + EXIT_SETTLE


@dataclass
class Decision:
    """What to change. ``None`` fields mean "leave as is"."""

    status: str | None = None
    log: str = ""  # action-log line (empty: nothing worth logging)
    status_container: dict[str, Any] | None = None
    status_requested: str | None = None
    remove_container: bool = False
    new_instance: bool = False  # start a new instance (fresh instance id), i.e. REQUESTED again
    clear_instance: bool = False  # STOPPED: clear start_instance_ts, time_to_stop_*, status_container
    start_instance_ts: datetime | None = None
    time_to_stop_ts: datetime | bool | None = False  # False = unchanged
    capture_logs: bool = False
    wake_spawner: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def is_noop(self) -> bool:
        return self == Decision()


def _phase(container: ContainerFacts) -> str:
    return {"running": "Running", "created": "Pending", "exited": "Succeeded" if container.exit_code == 0 else
            "Failed"}.get(container.state, "Unknown")


def _container_status(container: ContainerFacts, message: str, start: datetime | None = None) -> dict[str, Any]:
    when = container.started_at.replace(tzinfo=None) if container.started_at else start
    return {"phase": _phase(container), "start_time": when.isoformat() if when else None, "message": message}


def decide(pod: PodFacts, container: ContainerFacts | None, *, now: datetime, listed_at: datetime,
           deadline: timedelta, runtime_problem: str = "") -> Decision:
    """``container`` is the pod's container as listed at ``listed_at`` (None: there was none). ``now`` and
    ``listed_at`` are naive UTC like the stored timestamps."""
    d = Decision()
    # Only trust what the list showed for a status that was set before the list call was made.
    settled = pod.status_since <= listed_at
    stale = container is not None and container.instance_id != pod.instance_id
    overdue = now - pod.status_since > deadline
    if stale and settled and (pod.status != st.SPAWNER_SETUP or overdue):
        # A leftover of an earlier instance (or one a spawner that died was replacing): remove it; the rules
        # below see "no container".
        d.remove_container = True
        d.log = "health removed a container of an earlier instance"
        container = None
    elif stale:
        # The spawner is replacing it right now, or the pod changed since the list: look again next pass.
        return d

    if pod.status_requested in (st.OFF, st.RESTART):
        if container is not None:
            if container.state == "exited" and pod.status not in (st.DELETING, st.STOPPED):
                d.capture_logs = True
            d.remove_container = True
            if pod.status != st.DELETING:
                d.status = st.DELETING
                d.log = f"health found {pod.status_requested} pod with a container, set status to DELETING"
            return d
        if pod.status == st.SPAWNER_SETUP and not overdue:
            return d  # the spawner will notice OFF; wait for it
        if pod.status != st.STOPPED:
            d.status = st.STOPPED
            d.clear_instance = True
            d.log = "health set status to STOPPED"
        if pod.status_requested == st.RESTART:
            d.status_requested = st.ON
            d.status = st.REQUESTED
            d.new_instance = True
            d.clear_instance = True
            d.wake_spawner = True
            d.log = "health restarted pod: set status to REQUESTED, set to ON"
        return d

    # --- status_requested == ON
    if pod.status == st.STOPPED:
        d.status = st.REQUESTED
        d.new_instance = True
        d.wake_spawner = True
        d.log = "health found ON pod set to STOPPED, set status to REQUESTED"
        return d
    if pod.status == st.REQUESTED:
        if runtime_problem:
            d.status_container = {"phase": "Pending", "start_time": None, "message": runtime_problem}
        if overdue:
            d.wake_spawner = True
        return d
    if pod.status == st.SPAWNER_SETUP:
        # Past the deadline the spawner died mid-way (with or without having made the container): re-request.
        # A running container it left is not adopted: the engine may have carried out a start whose client died
        # only in part (running, but not reachable), and nothing cheap tells. So it goes (before the pod is
        # REQUESTED, so that no spawner races the removal) and a new instance starts afresh; the new instance
        # also makes a late answer of a spawner that was merely slow moot (lifecycle.finish checks it). A
        # created container is adopted: the next spawner starts it itself. (A live spawner confirms a start
        # moments after it, so a slow one is hardly ever caught here; removing created containers too would
        # keep replacing the container of a spawner slower than the deadline.)
        if overdue:
            d.status = st.REQUESTED
            d.wake_spawner = True
            d.log = f"health re-requested pod stuck in SPAWNER SETUP for over {deadline.total_seconds():.0f}s"
            if container is not None and container.state == "running":
                d.remove_container = True
                d.new_instance = True
                d.log += "; removed the container it had started, a new instance begins"
        return d
    if pod.status == st.DELETING:
        if container is not None:
            d.remove_container = True
        elif settled:
            d.status = st.STOPPED
            d.clear_instance = True
            d.log = "health set status to STOPPED"
        return d
    if pod.status in st.FINISHED:
        return d  # final for this instance; start/restart begins a new one

    # --- CREATING or AVAILABLE
    if container is None:
        if settled:
            d.status = st.STOPPED
            d.clear_instance = True
            d.log = f"health found no container for {pod.status} pod, set status to STOPPED"
        return d
    if container.state == "running":
        start = pod.start_instance_ts
        if pod.status != st.AVAILABLE or start is None:
            start = (container.started_at.replace(tzinfo=None) if container.started_at else now)
            d.status = st.AVAILABLE
            d.start_instance_ts = start
            d.log = "health set status to AVAILABLE"
            d.status_container = _container_status(container, "Container is running.", start)
        deadline_ts = time_to_stop_ts(start, pod.time_to_stop_default, pod.time_to_stop_instance)
        if deadline_ts != pod.time_to_stop_ts:
            d.time_to_stop_ts = deadline_ts
        if deadline_ts is not None and now >= deadline_ts:
            d.status_requested = st.OFF
            d.log = "health set pod to OFF due to time_to_stop trigger"
        return d
    if container.state == "exited":
        settles = _exit_settles_at(container)
        if settles is not None and listed_at < settles:
            return d  # maybe being removed: look again once the exit has settled (recheck_at)
        d.capture_logs = True
        if container.exit_code == 0:
            d.status = st.COMPLETE
            d.log = "health found container exited with code 0, set status to COMPLETE"
            d.status_container = _container_status(container, "Container completed (exit code 0).")
        else:
            code = "unknown" if container.exit_code is None else container.exit_code
            d.status = st.ERROR
            message = f"Container exited with code {code}. {container.message}".strip()
            d.log = f"health found container failed, set status to ERROR: {message}"
            d.status_container = _container_status(container, message)
        return d
    # created (not started yet) or unknown: give it until the deadline, then re-drive.
    if overdue:
        d.remove_container = True
        d.status = st.REQUESTED
        d.wake_spawner = True
        d.log = f"health re-requested pod: container stayed '{container.state}' ({container.message})"
    return d


def recheck_at(pod: PodFacts, *, listed_at: datetime, now: datetime, deadline: timedelta,
               container: ContainerFacts | None = None) -> datetime | None:
    """When :func:`decide` may answer differently for the same pod facts and the same container observation
    merely because time passed (the health loop skips a pod whose inputs did not change until then):

    - the pod's status was set after this pass's list call: the next list settles it (→ ``now``);
    - its transitional deadline (``status_since + deadline``) has not passed yet;
    - its ``time_to_stop_ts`` has not passed yet;
    - its container's exit has not settled yet (:data:`EXIT_SETTLE`).

    None: never (until the pod row or its container changes). Times already past are not returned, since the
    rules that depend on them answer the same from then on (a time equal to ``now`` is returned: the deadline
    rule flips only once ``now`` is past it)."""
    if pod.status_since > listed_at:
        return now
    future = [t for t in (pod.status_since + deadline, pod.time_to_stop_ts) if t is not None and t >= now]
    settles = _exit_settles_at(container)
    if settles is not None and settles > listed_at:  # decide waited for it: look again, even if late
        future.append(max(settles, now))
    return min(future) if future else None
