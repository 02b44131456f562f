"""Pods: CRUD, derived view, credentials, logs, permissions, start/stop/restart (the spec's /pods paths)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from starlette.responses import JSONResponse

from openpods.api import permissions_common as perms
from openpods.api.deps import Caller, Ctx, check_level
from openpods.api.envelope import BadRequest, Conflict, no_change, ok
from openpods.auth.tokens import Identity
from openpods.bus.base import HEALTH, SPAWNER, Wakeup
from openpods.context import AppContext
from openpods.domain import lifecycle
from openpods.domain import status as st
from openpods.domain import templates as tpl_domain
from openpods.domain.models import NewPod, NewTemplateTagFromPod, SetPermission, UpdatePod
from openpods.domain.permissions import Level
from openpods.domain.pods import (
    JUPYTER_SUFFIX,
    check_against_site,
    jupyter_id_reserved_for_other,
    jupyter_pod_id,
    split_pod_id_net,
    with_urls,
)
from openpods.services import pods as pod_svc
from openpods.services import templates as tpl_svc
from openpods.services.images import check_image_allowed
from openpods.services.mounts import check_mount_access
from openpods.store import repo
from openpods.store.db import retry_on_integrity_error, retry_on_stale_data, transaction
from openpods.store.tables import Pod, PodLog, PodSecret

router = APIRouter(prefix="/v3/pods", tags=["pods"])
RESTART_NOTE = "Changes take effect when the pod is (re)started: use restart_pod."


def _pod_exists(pod_id: str, tenant_id: str):
    return lambda s: s.get(Pod, (tenant_id, pod_id)) is not None


def load_pod(s: Session, caller: Identity, pod_id: str, needed: Level) -> Pod:
    pod = s.get(Pod, (caller.tenant_id, pod_id))
    check_level(s, caller, "pod", pod_id, needed, exists=pod is not None)
    assert pod is not None
    return pod


def set_status(s: Session, pod: Pod, status: str, actor: str, message: str | None = None) -> None:
    """Every status change goes through here: it stamps ``status_since`` and writes the action log."""
    if pod.status != status:
        pod.status = status
        pod.status_since = repo.utcnow()
    repo.add_action_log(s, "pod", pod.tenant_id, pod.pod_id, actor,
                        message or f"{actor} set status to {status}")


def _transition(s: Session, pod: Pod, change: lifecycle.Change) -> None:
    """Write a lifecycle change (start/stop/restart) and its action-log line."""
    lifecycle.apply(pod, change, repo.utcnow())
    repo.add_action_log(s, "pod", pod.tenant_id, pod.pod_id, change.actor, change.log)


def _validation(ctx: AppContext, s: Session, caller: Identity, fields: dict[str, Any]) -> None:
    errors = check_against_site(fields, ctx.limits)
    if (fields.get("resources") or {}).get("gpus") and not ctx.gpus_supported:
        errors.append("resources, gpus: this site's container engine cannot give containers GPUs.")
    if errors:
        raise BadRequest(errors)
    if fields.get("volume_mounts"):
        check_mount_access(s, caller, fields["volume_mounts"])


def check_effective(ctx: AppContext, s: Session, caller: Identity, pod: Pod) -> None:
    """The pod as it will run (own fields over its templates) must pass every rule the user's own fields
    must pass: site bounds, an allowed image, and the caller's access to every volume and snapshot it mounts.
    Otherwise a template would lend what the caller may not have."""
    derived = tpl_svc.derive(s, pod, ctx.settings)
    keys = ("resources", "time_to_stop_default", "time_to_stop_instance", "compute_queue", "networking")
    errors = check_against_site({k: derived.get(k) for k in keys if derived.get(k) is not None}, ctx.limits)
    if errors:
        raise BadRequest([f"(from the template) {e}" for e in errors] if pod.template else errors)
    check_image_allowed(s, ctx.settings, caller.tenant_id, derived.get("image") or "", ctx=ctx)
    if derived.get("volume_mounts"):
        check_mount_access(s, caller, derived["volume_mounts"])


def _retrying(fn):
    """Controllers update pods concurrently (optimistic locking on ``revision``): run a lost race again on a
    fresh read; after the last attempt the error handler answers 409."""
    return retry_on_stale_data(fn)


@router.get("", operation_id="list_pods", summary="list_pods")
def list_pods(ctx: Ctx, caller: Caller) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        query = select(Pod).where(Pod.tenant_id == caller.tenant_id).order_by(Pod.pod_id)
        if not caller.is_admin:
            ids = repo.readable_ids(s, "pod", caller.tenant_id, [caller.username])
            query = query.where(Pod.pod_id.in_(ids))
        pods = [pod_svc.pod_view(p) for p in s.scalars(query)]
    return ok(pods, "Pods retrieved successfully.")


@router.post("", operation_id="create_pod", summary="create_pod")
def create_pod(ctx: Ctx, caller: Caller, body: NewPod) -> JSONResponse:
    try:
        return _create_pod(ctx, caller, body)
    except IntegrityError:  # a concurrent create of the same id won the race
        raise Conflict(f"Pod with identifier '{body.pod_id}' already exists.") from None


def _create_pod(ctx: AppContext, caller: Identity, body: NewPod) -> JSONResponse:
    fields = body.model_dump()
    user_set = tpl_svc.user_set_fields(body.model_dump(exclude_unset=True))
    if jupyter_id_reserved_for_other(body.pod_id, caller.username):
        raise BadRequest([f"pod_id: ids ending in '{JUPYTER_SUFFIX}' are reserved for personal Jupyter pods; "
                          f"yours is '{jupyter_pod_id(caller.username)}'."])
    with transaction(ctx.sessions) as s:
        _validation(ctx, s, caller, {k: fields[k] for k in body.model_fields_set | {"resources"}})
        if s.get(Pod, (caller.tenant_id, body.pod_id)) is not None:
            raise Conflict(f"Pod with identifier '{body.pod_id}' already exists.")
        if body.template:
            fields["template"] = tpl_svc.pin_for_pod(s, caller, body.template)
        elif not body.image:
            raise BadRequest(["image: image is required if template is not provided."])
        now = repo.utcnow()
        pod = Pod(
            tenant_id=caller.tenant_id, pod_id=body.pod_id, image=body.image, template=fields["template"],
            description=body.description, command=body.command, arguments=body.arguments,
            environment_variables=body.environment_variables, status_requested=body.status_requested,
            volume_mounts=fields["volume_mounts"], time_to_stop_default=body.time_to_stop_default,
            time_to_stop_instance=body.time_to_stop_instance,
            networking=with_urls(fields["networking"], body.pod_id, ctx.settings.pods_domain(caller.tenant_id)),
            resources=fields["resources"], compute_queue=body.compute_queue, modified_fields=sorted(user_set),
            status=st.STOPPED, status_container={}, status_since=now, instance_id="", host_ports={},
            proxy_errors=[], creation_ts=now, update_ts=now,
        )
        check_effective(ctx, s, caller, pod)
        s.add(pod)
        try:
            s.flush()
        except IntegrityError:
            raise Conflict(f"Pod with identifier '{body.pod_id}' already exists.") from None
        s.add(pod_svc.create_credentials(ctx.secrets, caller.tenant_id, body.pod_id))
        repo.set_grant(s, "pod", caller.tenant_id, body.pod_id, caller.username, "ADMIN")
        repo.add_action_log(s, "pod", caller.tenant_id, body.pod_id, caller.username,
                            f"Pod object created by '{caller.username}'")
        if body.status_requested in (st.ON, st.RESTART):
            pod.status_requested = st.ON
            pod.instance_id = uuid.uuid4().hex[:12]
            set_status(s, pod, st.REQUESTED, "api", f"'{caller.username}' created pod; set status to REQUESTED")
        try:
            s.flush()
        except IntegrityError:
            raise Conflict(f"Pod with identifier '{body.pod_id}' already exists.") from None
        view = pod_svc.pod_view(pod)
    ctx.bus.publish(Wakeup(SPAWNER, caller.tenant_id, body.pod_id))
    return ok(view, "Pod created successfully.")


@router.get("/{pod_id}", operation_id="get_pod", summary="get_pod")
def get_pod(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.READ)
        return ok(pod_svc.pod_view(pod), "Pod retrieved successfully.")


@router.put("/{pod_id}", operation_id="update_pod", summary="update_pod")
@_retrying
def update_pod(ctx: Ctx, caller: Caller, pod_id: str, body: UpdatePod) -> JSONResponse:
    sent = body.model_dump(include=body.model_fields_set)
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.USER)
        if "resources" in sent:
            # Only the sub-fields sent change; the others keep their values.
            sent["resources"] = {**(pod.resources or {}), **body.resources.model_dump(exclude_unset=True)}
        if sent.get("status_requested", pod.status_requested) != pod.status_requested:
            # Changing it starts, stops or restarts the pod: the same level as those endpoints.
            check_level(s, caller, "pod", pod_id, Level.ADMIN, exists=True)
        _validation(ctx, s, caller, sent)
        if "networking" in sent:
            sent["networking"] = with_urls(sent["networking"], pod.pod_id,
                                           ctx.settings.pods_domain(caller.tenant_id))
        changed = {k: v for k, v in sent.items() if getattr(pod, k) != v}
        if not changed:
            return no_change(pod_svc.pod_view(pod), "pod")
        for key, value in changed.items():
            setattr(pod, key, value)
        pod.modified_fields = sorted(tpl_svc.update_user_set(pod.modified_fields or [],
                                                             body.model_dump(exclude_unset=True)))
        pod.update_ts = repo.utcnow()
        check_effective(ctx, s, caller, pod)
        repo.add_action_log(s, "pod", pod.tenant_id, pod.pod_id, caller.username,
                            f"'{caller.username}' updated pod, updated_fields: {sorted(changed)}")
        view = pod_svc.pod_view(pod)
    ctx.bus.publish(Wakeup(HEALTH, caller.tenant_id, pod_id))
    return ok(view, "Pod updated successfully.", metadata={"note": RESTART_NOTE})


@router.delete("/{pod_id}", operation_id="delete_pod", summary="delete_pod")
@_retrying
def delete_pod(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.ADMIN)
        s.delete(pod)
        for model in (PodSecret, PodLog):
            row = s.get(model, (caller.tenant_id, pod_id))
            if row is not None:
                s.delete(row)
        repo.delete_object_grants(s, "pod", caller.tenant_id, pod_id)
        repo.delete_action_logs(s, "pod", caller.tenant_id, pod_id)
    # The health loop removes the container of a pod that no longer exists.
    ctx.bus.publish(Wakeup(HEALTH, caller.tenant_id, pod_id))
    return ok("", "Pod successfully deleted.")


@router.get("/{pod_id}/derived", operation_id="get_derived_pod", summary="get_derived_pod")
def get_derived_pod(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.READ)
        derived = tpl_svc.derive(s, pod, ctx.settings)
    # Secrets are never substituted here: placeholders are shown as written.
    return ok(pod_svc.spec_view(derived), "Final derived pod retrieved successfully.")


@router.get("/{pod_id}/credentials", operation_id="get_pod_credentials", summary="get_pod_credentials")
def get_pod_credentials(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        load_pod(s, caller, pod_id, Level.USER)
        secrets = pod_svc.pod_secrets(s, ctx.secrets, caller.tenant_id, pod_id)
    return ok({"user_username": secrets.get("user_username", pod_id),
               "user_password": secrets.get("user_password", "")})


def _refresh_logs(ctx: AppContext, tenant_id: str, pod_id: str, instance: str) -> None:
    """Fresh output of a running pod (bounded), so logs are current when asked for."""
    from openpods.controllers.health import store_logs
    from openpods.domain.container_spec import container_name

    try:
        name = container_name(tenant_id, pod_id, ctx.installation_id)
        text = ctx.run_async(ctx.runtime.logs(name, ctx.settings.logs_max_bytes), 30)
    except Exception:  # the stored logs are still a good answer
        return
    try:
        store_logs(ctx, tenant_id, pod_id, instance, text)
    except (StaleDataError, IntegrityError):  # the health loop or a delete wrote the row meanwhile
        return


@router.get("/{pod_id}/logs", operation_id="get_pod_logs", summary="get_pod_logs")
def get_pod_logs(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.READ)
        running, instance = pod.status == st.AVAILABLE, pod.instance_id
    if running and ctx.runtime is not None and ctx.loop is not None:
        _refresh_logs(ctx, caller.tenant_id, pod_id, instance)
    with transaction(ctx.sessions) as s:
        row = s.get(PodLog, (caller.tenant_id, pod_id))
        logs = row.logs if row else ""
        actions = repo.action_logs(s, "pod", caller.tenant_id, pod_id)
    return ok({"logs": logs, "action_logs": actions}, "Pod logs retrieved successfully.")


@router.get("/{pod_id}/permissions", operation_id="get_pod_permissions", summary="get_pod_permissions")
def get_pod_permissions(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    return perms.get_permissions(ctx, caller, "pod", pod_id, _pod_exists(pod_id, caller.tenant_id))


@router.post("/{pod_id}/permissions", operation_id="set_pod_permission", summary="set_pod_permission")
def set_pod_permission(ctx: Ctx, caller: Caller, pod_id: str, body: SetPermission) -> JSONResponse:
    return perms.set_permission(ctx, caller, "pod", pod_id, _pod_exists(pod_id, caller.tenant_id), body)


@router.delete("/{pod_id}/permissions/{user}", operation_id="delete_pod_permission",
               summary="delete_pod_permission")
def delete_pod_permission(ctx: Ctx, caller: Caller, pod_id: str, user: str) -> JSONResponse:
    return perms.delete_permission(ctx, caller, "pod", pod_id, _pod_exists(pod_id, caller.tenant_id), user)


@router.get("/{pod_id}/stop", operation_id="stop_pod", summary="stop_pod")
@_retrying
def stop_pod(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.ADMIN)
        change = lifecycle.stop(lifecycle.state_of(pod), caller.username)
        _transition(s, pod, change)
        view = pod_svc.pod_view(pod)
    ctx.bus.publish(Wakeup(HEALTH, caller.tenant_id, pod_id))
    return ok(view, change.message)


@router.get("/{pod_id}/start", operation_id="start_pod", summary="start_pod")
@_retrying
def start_pod(ctx: Ctx, caller: Caller, pod_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.ADMIN)
        change = lifecycle.start(lifecycle.state_of(pod), caller.username)  # ConflictError: 409
        _transition(s, pod, change)
        view = pod_svc.pod_view(pod)
    ctx.bus.publish(Wakeup(SPAWNER, caller.tenant_id, pod_id))
    ctx.bus.publish(Wakeup(HEALTH, caller.tenant_id, pod_id))
    return ok(view, change.message)


@router.get("/{pod_id}/restart", operation_id="restart_pod", summary="restart_pod")
@_retrying
def restart_pod(ctx: Ctx, caller: Caller, pod_id: str, grab_latest_template_tag: bool = False) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.ADMIN)
        note = ""
        if grab_latest_template_tag and pod.template:
            new = tpl_svc.pin_for_pod(s, caller, tpl_svc.unpin(pod.template))
            if new != pod.template:
                note = f" (template {pod.template} -> {new})"
                pod.template = new
                check_effective(ctx, s, caller, pod)
        change = lifecycle.restart(lifecycle.state_of(pod), caller.username, note)
        _transition(s, pod, change)
        view = pod_svc.pod_view(pod)
    ctx.bus.publish(Wakeup(SPAWNER, caller.tenant_id, pod_id))
    ctx.bus.publish(Wakeup(HEALTH, caller.tenant_id, pod_id))
    return ok(view, change.message)


@router.post("/{pod_id_net}/save_pod_as_template_tag", operation_id="save_pod_as_template_tag",
             summary="save_pod_as_template_tag")
def save_pod_as_template_tag(ctx: Ctx, caller: Caller, pod_id_net: str, body: NewTemplateTagFromPod) -> JSONResponse:
    return retry_on_integrity_error(lambda: _save_pod_as_template_tag(ctx, caller, pod_id_net, body))


@_retrying
def _save_pod_as_template_tag(ctx: AppContext, caller: Identity, pod_id_net: str,
                              body: NewTemplateTagFromPod) -> JSONResponse:
    from openpods.api.routers.templates import load_template

    pod_id, _ = split_pod_id_net(pod_id_net)
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.ADMIN)
        load_template(s, caller, body.template_id, Level.USER)
        fields = {name: getattr(pod, name) for name in pod_svc.POD_VIEW_FIELDS}
        definition = tpl_domain.definition_from_pod(fields, set(pod.modified_fields or []))
        row = tpl_svc.create_tag(s, caller.tenant_id, body.template_id, body.tag, definition, body.commit_message,
                                 caller.username)
        repo.add_action_log(s, "pod", pod.tenant_id, pod.pod_id, caller.username,
                            f"'{caller.username}' saved pod as template tag {body.template_id}:{row.tag_timestamp}")
        return ok(tpl_svc.tag_view(row), "Template tag added successfully.")
