"""A pod's lifecycle transitions, as pure functions: start / stop / restart (the API), claim and finish (the
spawner), and :func:`apply`, which writes a transition onto a pod row (the API, the spawner and the health loop).

Each function takes the pod's current lifecycle fields and returns a :class:`Change`: the new field values
(``None``: unchanged) and the action-log line, or raises :class:`~openpods.domain.errors.ConflictError` when the
pod's state does not allow the transition. The health loop's own decisions come from
:func:`openpods.domain.reconcile.decide`; it applies them with :func:`apply` too, so every status change stamps
``status_since`` the same way. No I/O here; new instance ids come from ``new_id`` (injectable for tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from openpods.domain import status as st
from openpods.domain.errors import ConflictError

# The phase shown in status_container for a status the spawner records.
_SPAWN_PHASE = {st.CREATING: "Pending", st.ERROR: "Failed"}


def new_instance_id() -> str:
    """A fresh instance id: labels the instance's container and its logs."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True, slots=True)
class PodState:
    """The lifecycle fields of a pod (a row of ``pods`` has them all)."""

    pod_id: str
    status: str
    status_requested: str
    instance_id: str = ""
    status_message: str | None = None  # status_container["message"], if any


@dataclass(frozen=True, slots=True)
class Change:
    """New values of a pod's lifecycle fields (``None``: unchanged), the action-log line and who writes it, and
    for the API the response message."""

    status: str | None = None
    status_requested: str | None = None
    instance_id: str | None = None
    status_container: dict[str, Any] | None = None
    touch: bool = False  # the user changed the pod: update_ts moves
    actor: str = ""
    log: str = ""  # empty: nothing worth an action-log line
    message: str = ""


def state_of(pod: Any) -> PodState:
    """The lifecycle fields of a pod row (or any object with the same attributes)."""
    container = pod.status_container
    return PodState(pod_id=pod.pod_id, status=pod.status, status_requested=pod.status_requested,
                    instance_id=pod.instance_id or "",
                    status_message=container.get("message") if isinstance(container, dict) else None)


def apply(pod: Any, change: Change, now: datetime) -> None:
    """Write ``change`` onto a pod row; ``status_since`` moves only when the status really changes."""
    if change.status is not None and change.status != pod.status:
        pod.status = change.status
        pod.status_since = now
    if change.status_requested is not None:
        pod.status_requested = change.status_requested
    if change.instance_id is not None:
        pod.instance_id = change.instance_id
    if change.status_container is not None:
        pod.status_container = change.status_container
    if change.touch:
        pod.update_ts = now


# --- the API: start_pod, stop_pod, restart_pod ----------------------------------------------------------------


def start(pod: PodState, username: str, *, new_id: Callable[[], str] = new_instance_id) -> Change:
    """start_pod: a stopped or finished pod gets a new instance (REQUESTED); a pod still stopping starts again once
    stopped; any other status is a conflict (use stop_pod or restart_pod)."""
    if pod.status in (st.STOPPED, *st.FINISHED):
        return Change(status=st.REQUESTED, status_requested=st.ON, instance_id=new_id(), touch=True, actor="api",
                      log=f"'{username}' ran start_pod, set to ON and REQUESTED",
                      message="Updated pod's status_requested to ON and requested pod.")
    if pod.status == st.DELETING:
        return Change(status_requested=st.ON, actor=username,
                      log=f"'{username}' ran start_pod while stopping, set to ON",
                      message="Pod is stopping; it will start again once stopped.")
    raise ConflictError("Pod must be in 'STOPPED' status to run 'start_pod'. Please run 'stop_pod' or "
                        f"'restart_pod' instead. Pod '{pod.pod_id}' is {pod.status}.")


def stop(pod: PodState, username: str) -> Change:
    """stop_pod: always OFF. A pod not spawned yet is STOPPED at once (the spawner claims REQUESTED pods with the
    same optimistic lock); one with an instance is DELETING until the health loop has removed its container."""
    message = "Updated pod's status_requested to OFF."
    if pod.status == st.REQUESTED:
        return Change(status=st.STOPPED, status_requested=st.OFF, touch=True, actor="api",
                      log=f"'{username}' ran stop_pod, set to OFF and STOPPED", message=message)
    if pod.status != st.STOPPED:
        return Change(status=st.DELETING, status_requested=st.OFF, touch=True, actor="api",
                      log=f"'{username}' ran stop_pod, set to OFF and DELETING", message=message)
    return Change(status_requested=st.OFF, touch=True, actor=username, log=f"'{username}' ran stop_pod, set to OFF",
                  message=message)


def restart(pod: PodState, username: str, note: str = "", *,
            new_id: Callable[[], str] = new_instance_id) -> Change:
    """restart_pod: a stopped or finished pod gets a new instance at once; otherwise RESTART, which the health
    loop carries out (remove the container, then REQUESTED with a new instance). ``note`` ends the log line."""
    message = "Updated pod's status_requested to RESTART."
    if pod.status in (st.STOPPED, *st.FINISHED):
        return Change(status=st.REQUESTED, status_requested=st.ON, instance_id=new_id(), touch=True, actor="api",
                      log=f"'{username}' ran restart_pod, set to ON and REQUESTED{note}", message=message)
    return Change(status_requested=st.RESTART, touch=True, actor=username,
                  log=f"'{username}' ran restart_pod, set to RESTART{note}", message=message)


# --- the spawner: claim a REQUESTED pod, record the outcome --------------------------------------------------


def claim(pod: PodState, *, new_id: Callable[[], str] = new_instance_id) -> Change:
    """REQUESTED + ON → SPAWNER SETUP, keeping the pod's instance id (a new one if it has none). A pod in any
    other state is not the spawner's to take: ConflictError."""
    if pod.status != st.REQUESTED or pod.status_requested != st.ON:
        raise ConflictError(f"Pod '{pod.pod_id}' is {pod.status} ({pod.status_requested}), not REQUESTED and ON.")
    return Change(status=st.SPAWNER_SETUP, instance_id=None if pod.instance_id else new_id(), actor="spawner",
                  log="spawner set status to SPAWNER SETUP")


def finish(pod: PodState, instance: str, status: str, message: str) -> Change:
    """Record what the spawn of ``instance`` came to: CREATING (the container exists), ERROR (it cannot run) or
    REQUESTED (retry later; the same reason again is not logged twice). Only while the pod is still in SPAWNER
    SETUP for that instance: otherwise someone changed it meanwhile (ConflictError) and the outcome is moot."""
    if status not in (st.CREATING, st.ERROR, st.REQUESTED):
        raise ValueError(f"a spawn cannot end in {status}")
    if pod.status != st.SPAWNER_SETUP or pod.instance_id != instance:
        raise ConflictError(f"Pod '{pod.pod_id}' is no longer in SPAWNER SETUP for instance {instance}.")
    repeated = status == st.REQUESTED and message == pod.status_message
    return Change(status=status,
                  status_container={"phase": _SPAWN_PHASE.get(status, "Pending"), "start_time": None,
                                    "message": message},
                  actor="spawner",
                  log="" if repeated else f"spawner set status to {status}" + (
                      f": {message}" if status != st.CREATING else ""))
