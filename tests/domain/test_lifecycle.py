"""Every transition of openpods.domain.lifecycle (start / stop / restart / claim / finish / apply)."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest

from openpods.domain import lifecycle as lc
from openpods.domain import status as st
from openpods.domain.errors import ConflictError

NEW = "newinstance1"


def new_id() -> str:
    return NEW


def pod(status: str, requested: str = st.ON, instance: str = "oldinstance1", message: str | None = None) -> lc.PodState:
    return lc.PodState(pod_id="mypod", status=status, status_requested=requested, instance_id=instance,
                       status_message=message)


# --- start_pod -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [st.STOPPED, st.ERROR, st.COMPLETE])
def test_start_a_stopped_or_finished_pod_requests_a_new_instance(status: str) -> None:
    change = lc.start(pod(status, st.OFF), "alice", new_id=new_id)
    assert change == lc.Change(status=st.REQUESTED, status_requested=st.ON, instance_id=NEW, touch=True,
                               actor="api", log="'alice' ran start_pod, set to ON and REQUESTED",
                               message="Updated pod's status_requested to ON and requested pod.")


def test_start_while_stopping_only_asks_for_on() -> None:
    change = lc.start(pod(st.DELETING, st.OFF), "alice", new_id=new_id)
    assert change == lc.Change(status_requested=st.ON, actor="alice",
                               log="'alice' ran start_pod while stopping, set to ON",
                               message="Pod is stopping; it will start again once stopped.")


@pytest.mark.parametrize("status", [st.REQUESTED, st.SPAWNER_SETUP, st.CREATING, st.AVAILABLE])
def test_start_of_a_live_pod_is_a_conflict(status: str) -> None:
    with pytest.raises(ConflictError) as err:
        lc.start(pod(status), "alice", new_id=new_id)
    assert err.value.message == ("Pod must be in 'STOPPED' status to run 'start_pod'. Please run 'stop_pod' or "
                                 f"'restart_pod' instead. Pod 'mypod' is {status}.")


# --- stop_pod --------------------------------------------------------------------------------------------------

STOP_MESSAGE = "Updated pod's status_requested to OFF."


def test_stop_of_a_requested_pod_is_stopped_at_once() -> None:
    assert lc.stop(pod(st.REQUESTED), "alice") == lc.Change(
        status=st.STOPPED, status_requested=st.OFF, touch=True, actor="api",
        log="'alice' ran stop_pod, set to OFF and STOPPED", message=STOP_MESSAGE)


@pytest.mark.parametrize("status", [st.SPAWNER_SETUP, st.CREATING, st.AVAILABLE, st.ERROR, st.COMPLETE,
                                    st.DELETING])
def test_stop_of_a_pod_with_an_instance_is_deleting(status: str) -> None:
    assert lc.stop(pod(status), "alice") == lc.Change(
        status=st.DELETING, status_requested=st.OFF, touch=True, actor="api",
        log="'alice' ran stop_pod, set to OFF and DELETING", message=STOP_MESSAGE)


def test_stop_of_a_stopped_pod_only_sets_off() -> None:
    assert lc.stop(pod(st.STOPPED, st.ON), "alice") == lc.Change(
        status_requested=st.OFF, touch=True, actor="alice", log="'alice' ran stop_pod, set to OFF",
        message=STOP_MESSAGE)


# --- restart_pod -----------------------------------------------------------------------------------------------

RESTART_MESSAGE = "Updated pod's status_requested to RESTART."


@pytest.mark.parametrize("status", [st.STOPPED, st.ERROR, st.COMPLETE])
def test_restart_of_a_stopped_or_finished_pod_requests_a_new_instance(status: str) -> None:
    assert lc.restart(pod(status, st.OFF), "alice", " (template t:1 -> t:2)", new_id=new_id) == lc.Change(
        status=st.REQUESTED, status_requested=st.ON, instance_id=NEW, touch=True, actor="api",
        log="'alice' ran restart_pod, set to ON and REQUESTED (template t:1 -> t:2)", message=RESTART_MESSAGE)


@pytest.mark.parametrize("status", [st.REQUESTED, st.SPAWNER_SETUP, st.CREATING, st.AVAILABLE, st.DELETING])
def test_restart_of_a_live_pod_is_left_to_the_health_loop(status: str) -> None:
    assert lc.restart(pod(status), "alice", new_id=new_id) == lc.Change(
        status_requested=st.RESTART, touch=True, actor="alice", log="'alice' ran restart_pod, set to RESTART",
        message=RESTART_MESSAGE)


# --- the spawner's claim ---------------------------------------------------------------------------------------


def test_claim_keeps_the_instance_id() -> None:
    assert lc.claim(pod(st.REQUESTED), new_id=new_id) == lc.Change(
        status=st.SPAWNER_SETUP, instance_id=None, actor="spawner", log="spawner set status to SPAWNER SETUP")


def test_claim_gives_a_pod_without_instance_one() -> None:
    assert lc.claim(pod(st.REQUESTED, instance=""), new_id=new_id).instance_id == NEW


@pytest.mark.parametrize(("status", "requested"), [(st.REQUESTED, st.OFF), (st.REQUESTED, st.RESTART),
                                                   (st.SPAWNER_SETUP, st.ON), (st.STOPPED, st.ON),
                                                   (st.AVAILABLE, st.ON), (st.DELETING, st.ON)])
def test_claim_of_a_pod_not_requested_and_on_is_a_conflict(status: str, requested: str) -> None:
    with pytest.raises(ConflictError):
        lc.claim(pod(status, requested), new_id=new_id)


# --- the spawner's finish --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "phase", "log"), [
    (st.CREATING, "Pending", "spawner set status to CREATING"),
    (st.ERROR, "Failed", "spawner set status to ERROR: no such image"),
    (st.REQUESTED, "Pending", "spawner set status to REQUESTED: no such image"),
])
def test_finish_records_the_outcome(status: str, phase: str, log: str) -> None:
    change = lc.finish(pod(st.SPAWNER_SETUP), "oldinstance1", status, "no such image")
    assert change == lc.Change(status=status, actor="spawner", log=log,
                               status_container={"phase": phase, "start_time": None, "message": "no such image"})


def test_finish_does_not_log_the_same_retry_reason_twice() -> None:
    state = pod(st.SPAWNER_SETUP, message="Waiting for the container engine: down")
    assert lc.finish(state, "oldinstance1", st.REQUESTED, "Waiting for the container engine: down").log == ""
    assert lc.finish(state, "oldinstance1", st.REQUESTED, "Waiting for the container engine: other").log != ""
    assert lc.finish(state, "oldinstance1", st.ERROR, "Waiting for the container engine: down").log != ""


@pytest.mark.parametrize("state", [pod(st.SPAWNER_SETUP, instance="otherinstanc"), pod(st.STOPPED),
                                   pod(st.REQUESTED), pod(st.DELETING, st.OFF)])
def test_finish_after_the_pod_moved_on_is_a_conflict(state: lc.PodState) -> None:
    with pytest.raises(ConflictError):
        lc.finish(state, "oldinstance1", st.CREATING, "Container created.")


def test_finish_in_a_status_a_spawn_cannot_end_in_is_a_bug() -> None:
    with pytest.raises(ValueError):
        lc.finish(pod(st.SPAWNER_SETUP), "oldinstance1", st.AVAILABLE, "")


# --- apply -----------------------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0)
T1 = datetime(2026, 1, 1, 12, 5)


def row(**fields: object) -> SimpleNamespace:
    base = dict(pod_id="mypod", status=st.AVAILABLE, status_requested=st.ON, instance_id="oldinstance1",
                status_since=T0, status_container={"message": "Container is running."}, update_ts=T0)
    return SimpleNamespace(**{**base, **fields})


def test_apply_writes_the_fields_and_stamps_status_since() -> None:
    target = row()
    lc.apply(target, lc.Change(status=st.REQUESTED, status_requested=st.ON, instance_id=NEW, touch=True,
                               status_container={"phase": "Pending"}), T1)
    assert (target.status, target.status_since, target.instance_id, target.update_ts, target.status_container) == (
        st.REQUESTED, T1, NEW, T1, {"phase": "Pending"})


def test_apply_of_the_same_status_keeps_status_since_and_none_keeps_fields() -> None:
    target = row()
    lc.apply(target, lc.Change(status=st.AVAILABLE), T1)
    lc.apply(target, lc.Change(), T1)
    assert target == row()


def test_state_of_reads_a_row() -> None:
    assert lc.state_of(row(instance_id=None, status_container=[])) == lc.PodState(
        pod_id="mypod", status=st.AVAILABLE, status_requested=st.ON, instance_id="", status_message=None)
    assert lc.state_of(row()).status_message == "Container is running."


def test_new_instance_ids_are_short_and_fresh() -> None:
    ids = {lc.new_instance_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 12 for i in ids)
