"""Pods: CRUD, derived view, credentials, logs, permissions, start/stop/restart (the spec's /pods paths)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from sqlalchemy import String, and_, bindparam, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from openpods.api import permissions_common as perms
from openpods.api import rawjson
from openpods.api.deps import Caller, Ctx, check_level, check_own_grant, get_identity
from openpods.api.envelope import BadRequest, Conflict, no_change, ok
from openpods.api.fast_routes import DirectRoute
from openpods.api.routing import api_router
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
from openpods.store.fastread import FastReads
from openpods.store.tables import Permission, Pod, PodLog, PodSecret

router = api_router(prefix="/v3/pods", tags=["pods"])
RESTART_NOTE = "Changes take effect when the pod is (re)started: use restart_pod."


def _pod_exists(pod_id: str, tenant_id: str):
    return lambda s: s.get(Pod, (tenant_id, pod_id)) is not None


# Built once: constructing the statement cost more than running it. The pod joined with the caller's own grant.
_POD_WITH_GRANT = (
    select(Pod, Permission.level)
    .outerjoin(Permission, and_(Permission.object_type == "pod", Permission.tenant_id == Pod.tenant_id,
                                Permission.object_id == Pod.pod_id, Permission.username == bindparam("username")))
    .where(Pod.tenant_id == bindparam("tenant_id"), Pod.pod_id == bindparam("pod_id"))
)


def load_pod(s: Session, caller: Identity, pod_id: str, needed: Level) -> Pod:
    """The pod, if the caller holds ``needed`` on it (else 404/403 as :func:`check_level`), in one query."""
    row = s.execute(_POD_WITH_GRANT, {"username": caller.username, "tenant_id": caller.tenant_id,
                                      "pod_id": pod_id}).first()
    check_own_grant(caller, "pod", pod_id, needed, exists=row is not None, grant=row[1] if row else None)
    assert row is not None
    return row[0]


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


_VIEW_ATTRS = [getattr(Pod, name) for name in pod_svc.POD_VIEW_FIELDS]
_render_view = rawjson.RowRenderer(_VIEW_ATTRS, pod_svc.pod_view)
# A pod row's version: its revision (bumped on every ORM write) and creation_ts (a pod deleted and made again
# starts its revisions over). (pod_id, revision, creation_ts) of every pod of the tenant, or of those the
# caller holds a grant on (any level >= READ).
_LIST_ALL = (select(Pod.pod_id, Pod.revision, Pod.creation_ts).where(Pod.tenant_id == bindparam("tenant_id"))
             .order_by(Pod.pod_id))
_LIST_GRANTED = _LIST_ALL.join(Permission, and_(
    Permission.object_type == "pod", Permission.tenant_id == Pod.tenant_id, Permission.object_id == Pod.pod_id,
    Permission.username == bindparam("username")))
_VIEW_ROWS = (select(Pod.pod_id, Pod.revision, Pod.creation_ts, *rawjson.raw_json_columns(_VIEW_ATTRS))
              .where(Pod.tenant_id == bindparam("tenant_id"), Pod.pod_id.in_(bindparam("ids", expanding=True))))
# The listed pods' ids and versions, aggregated (in one scan, so in one order) by the database: when they equal
# those a cached list was rendered for, nothing in that list changed and the cached body is the answer.
_SIG_ALL = (select(func.aggregate_strings(Pod.pod_id, ","), func.aggregate_strings(cast(Pod.revision, String), ","),
                   func.aggregate_strings(cast(Pod.creation_ts, String), ","))
            .where(Pod.tenant_id == bindparam("tenant_id")))
# An ordinary user's list is the tenant's pods (their versions as above) that the user holds a grant on: unchanged
# while both are unchanged. Two scans of one index each instead of a join: on SQLite the join's probe per pod
# cost 3x the scans.
_SIG_GRANTED = _SIG_ALL.add_columns(
    select(func.aggregate_strings(Permission.object_id, ","))
    .where(Permission.object_type == "pod", Permission.tenant_id == bindparam("tenant_id"),
           Permission.username == bindparam("username"))
    .scalar_subquery())
_SIG_ALL_READ, _SIG_GRANTED_READ = FastReads(_SIG_ALL), FastReads(_SIG_GRANTED)


async def list_pods(request: Request) -> Response:
    """One aggregate query answers an unchanged list from the cache, on the event loop (SQLite: a local
    index-only scan; PostgreSQL: one round trip on an autocommit connection, store.asyncread). Otherwise, in the
    thread pool: (pod_id, version) of the listed pods, and only pods changed since this process last rendered
    them are read in full and rendered (see api.rawjson)."""
    ctx: AppContext = request.app.state.ctx
    caller = await get_identity(request)
    read = (_SIG_ALL_READ if caller.is_admin else _SIG_GRANTED_READ).compiled(ctx.engine)
    params = {"tenant_id": caller.tenant_id, "username": caller.username}
    if ctx.reads is not None and ctx.reads.available():
        parts = await ctx.reads.first(read, params)
    elif ctx.engine.dialect.name == "sqlite":
        parts = read.first(params)
    else:
        parts = await run_in_threadpool(read.first, params)
    signature = "\n".join(part or "" for part in parts or ())
    body = ctx.pod_views.get_list(_list_scope(caller), signature)
    if body is not None:
        return Response(body, media_type="application/json")
    return await run_in_threadpool(_list_pods, ctx, caller, signature)


router.add_api_route("", list_pods, methods=["GET"], operation_id="list_pods", summary="list_pods",
                     route_class_override=DirectRoute)  # called directly (api.fast_routes)


def _list_scope(caller: Identity) -> tuple[str, str]:
    return caller.tenant_id, "" if caller.is_admin else caller.username


def _list_pods(ctx: AppContext, caller: Identity, signature: str) -> Response:
    views, tenant_id = ctx.pod_views, caller.tenant_id
    params = {"tenant_id": tenant_id, "username": caller.username}
    with ctx.engine.connect() as conn:
        listed = [(pod_id, (revision, created)) for pod_id, revision, created in
                  conn.execute(_LIST_ALL if caller.is_admin else _LIST_GRANTED, params)]
        rendered = views.get_many(tenant_id, listed)
        missing = [pod_id for pod_id, _ in listed if pod_id not in rendered]
        for i in range(0, len(missing), 500):
            for pod_id, revision, created, *values in conn.execute(_VIEW_ROWS,
                                                                    {**params, "ids": missing[i:i + 500]}):
                rendered[pod_id] = _render_view(values)
                views.put(tenant_id, pod_id, (revision, created), rendered[pod_id])
    if caller.is_admin:
        views.keep_only(tenant_id, rendered.keys())
    # A pod deleted between the reads is left out. Everything read after the signature is at least as new, so
    # the body may only be newer than its signature, never older: a later change still changes the signature.
    response = rawjson.ok_fragments([rendered[p] for p, _ in listed if p in rendered], "Pods retrieved successfully.")
    views.put_list(_list_scope(caller), signature, bytes(response.body))
    return response


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


# One query: the pod's view columns (JSON as stored), its version and the caller's own grant.
_GET_VIEW = (
    select(Pod.revision, Pod.creation_ts, Permission.level, *rawjson.raw_json_columns(_VIEW_ATTRS))
    .outerjoin(Permission, and_(Permission.object_type == "pod", Permission.tenant_id == Pod.tenant_id,
                                Permission.object_id == Pod.pod_id, Permission.username == bindparam("username")))
    .where(Pod.tenant_id == bindparam("tenant_id"), Pod.pod_id == bindparam("pod_id"))
)


_GET_VIEW_READ = FastReads(_GET_VIEW)


async def get_pod(request: Request, pod_id: str) -> Response:
    # The hottest endpoint: the context and caller without FastAPI dependencies (solving them cost more than
    # the query). One primary-key read, on the event loop: on SQLite (a local file in WAL mode, where readers
    # never wait for writers) blocking, since the hop to the thread pool costs more than the read; on
    # PostgreSQL awaited on an autocommit connection (store.asyncread). Else in the thread pool.
    ctx: AppContext = request.app.state.ctx
    caller = await get_identity(request)
    params = {"username": caller.username, "tenant_id": caller.tenant_id, "pod_id": pod_id}
    if ctx.reads is not None and ctx.reads.available():
        row = await ctx.reads.first(_GET_VIEW_READ.compiled(ctx.engine), params)
    elif ctx.engine.dialect.name == "sqlite":
        row = _GET_VIEW_READ.first(ctx.engine, params)
    else:
        row = await run_in_threadpool(_GET_VIEW_READ.first, ctx.engine, params)
    return _pod_response(ctx, caller, pod_id, row)


router.add_api_route("/{pod_id}", get_pod, methods=["GET"], operation_id="get_pod", summary="get_pod",
                     route_class_override=DirectRoute)  # called directly (api.fast_routes)


def _pod_response(ctx: AppContext, caller: Identity, pod_id: str, row: tuple[Any, ...] | None) -> Response:
    check_own_grant(caller, "pod", pod_id, Level.READ, exists=row is not None, grant=row[2] if row else None)
    assert row is not None
    revision, created, _, *values = row
    rendered = ctx.pod_views.get(caller.tenant_id, pod_id, (revision, created))
    if rendered is None:
        rendered = _render_view(values)
        ctx.pod_views.put(caller.tenant_id, pod_id, (revision, created), rendered)
    return rawjson.ok_fragment(rendered, "Pod retrieved successfully.")


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
