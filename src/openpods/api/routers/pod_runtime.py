"""Operations on a pod's running container: exec_pod_commands and upload_to_pod (ADMIN)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from openpods.api.deps import Caller, Ctx
from openpods.api.envelope import BadRequest, Conflict, TapisError, ok
from openpods.api.routers.pods import load_pod
from openpods.api.routing import api_router
from openpods.auth.tokens import Identity
from openpods.context import AppContext
from openpods.domain import status as st
from openpods.domain.container_spec import container_name
from openpods.domain.models import ExecutePodCommands
from openpods.domain.permissions import Level
from openpods.runtimes.base import BadDestination, ContainerNotRunning, RuntimeFailure
from openpods.services import pods as pod_svc
from openpods.store import repo
from openpods.store.db import transaction

router = api_router(prefix="/v3/pods", tags=["pods"])
# The original's exec messages; ours append the numbers.
TOTAL_TIMEOUT = "Execution stopped due to total timeout. Consider increasing the total_timeout parameter."
COMMAND_TIMEOUT = ("Execution stopped due to command timeout on latest command. Consider increasing the "
                   "command_timeout parameter.")
COMMAND_FAILED = ("Execution stopped due to command failure on latest command. Consider setting "
                  "fail_on_non_success=False to continue through errors.")


def _running_pod(ctx: AppContext, caller: Identity, pod_id: str) -> list[str]:
    """Checks ADMIN and that the pod runs; returns the secret values to redact."""
    with transaction(ctx.sessions) as s:
        pod = load_pod(s, caller, pod_id, Level.ADMIN)
        if pod.status != st.AVAILABLE:
            raise Conflict(
                f"Pod '{pod_id}' is {pod.status}; it must be AVAILABLE (running) for this operation."
            )
        return pod_svc.secret_values(pod_svc.pod_secrets(s, ctx.secrets, caller.tenant_id, pod_id))


def _runtime(ctx: AppContext) -> Any:
    if ctx.runtime is None:
        raise TapisError(ctx.runtime_problem or "No container runtime is available.", 503)
    return ctx.runtime


def _log(ctx: AppContext, caller: Identity, pod_id: str, message: str) -> None:
    with transaction(ctx.sessions) as s:
        repo.add_action_log(s, "pod", caller.tenant_id, pod_id, caller.username, message)


@router.post("/{pod_id}/exec", operation_id="exec_pod_commands", summary="exec_pod_commands")
async def exec_pod_commands(ctx: Ctx, caller: Caller, pod_id: str, body: ExecutePodCommands) -> JSONResponse:
    secrets = await asyncio.to_thread(_running_pod, ctx, caller, pod_id)
    runtime = _runtime(ctx)
    name = container_name(caller.tenant_id, pod_id, ctx.installation_id)
    commands = body.normalized()
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    message = "All commands completed."
    for argv in commands:
        remaining = body.total_timeout - (time.monotonic() - started)
        if remaining <= 0:
            message = f"{TOTAL_TIMEOUT} (total_timeout: {body.total_timeout} seconds; remaining commands not run.)"
            break
        timeout = min(body.command_timeout, remaining)
        stamp = datetime.now(UTC).replace(tzinfo=None).isoformat()
        try:
            result = await runtime.exec(name, argv, timeout)
        except ContainerNotRunning:
            raise Conflict(f"Pod '{pod_id}' has no running container.") from None
        except RuntimeFailure as exc:
            raise TapisError(f"Container engine error: {exc}", 503) from None
        if result.timed_out:
            success: bool | str = f"Timeout after {timeout:g} seconds."
        else:
            success = result.exit_code == 0
        results.append(
            {
                "command": pod_svc.redact(" ".join(argv), secrets),
                "stdout": pod_svc.redact(result.stdout, secrets),
                "stderr": pod_svc.redact(result.stderr, secrets),
                "exit_code": result.exit_code,
                "success": success,
                "duration_sec": round(result.duration_sec, 3),
                "timestamp": stamp,
            }
        )
        if result.timed_out:
            if timeout < body.command_timeout:
                message = f"{TOTAL_TIMEOUT} (total_timeout: {body.total_timeout} seconds, reached in a command.)"
            else:
                message = f"{COMMAND_TIMEOUT} (command_timeout: {body.command_timeout} seconds.)"
            if body.fail_on_non_success or timeout < body.command_timeout:
                break
        elif success is not True and body.fail_on_non_success:
            message = f"{COMMAND_FAILED} (exit code {result.exit_code}.)"
            break
    successful = sum(1 for r in results if r["success"] is True)
    summary = (
        f"'{caller.username}' executed {len(results)} of {len(commands)} commands ({successful} successful)."
    )
    await asyncio.to_thread(_log, ctx, caller, pod_id, summary)
    return ok(
        {"execution_results": results, "total_commands": len(commands), "successful_commands": successful},
        message,
    )


async def copy_into_container(ctx: AppContext, runtime: Any, name: str, upload: UploadFile, dest: str) -> int:
    """Spool an uploaded file to disk (never whole in memory) and copy it into the container through the
    engine's archive API (no shell needed in the image). Returns its size."""
    fd, tmp = tempfile.mkstemp(prefix="openpods-upload-", dir=ctx.settings.data_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(1024 * 1024):
                await asyncio.to_thread(out.write, chunk)
        size = os.path.getsize(tmp)
        try:
            await runtime.put_file(name, dest, tmp)
        except BadDestination as exc:
            raise BadRequest([f"dest_path: {exc}"]) from None
        except ContainerNotRunning:
            raise Conflict("The pod has no running container.") from None
        except RuntimeFailure as exc:
            raise TapisError(f"Container engine error: {exc}", 503) from None
        return size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


MAX_FORM_TEXT = 4096


async def form_text(form: Any, name: str) -> str | None:
    """A text part of a multipart form, sent either as a plain field or as a file part: tapipy (through
    requests' ``files=``) sends every form parameter of an upload, e.g. ``dest_path``, as a file part."""
    value = form.get(name)
    if isinstance(value, UploadFile):
        raw = await value.read(MAX_FORM_TEXT + 1)
        if len(raw) > MAX_FORM_TEXT:
            raise BadRequest([f"{name}: must be at most {MAX_FORM_TEXT} bytes."])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest([f"{name}: must be UTF-8 text."]) from None
    return value


@router.post("/{pod_id}/upload_to_pod", operation_id="upload_to_pod", summary="upload_to_pod")
async def upload_to_pod(ctx: Ctx, caller: Caller, pod_id: str, request: Request) -> JSONResponse:
    await asyncio.to_thread(_running_pod, ctx, caller, pod_id)
    runtime = _runtime(ctx)
    # The multipart parser spools file parts to disk (never the whole file in memory). Two file parts: the
    # file and, from tapipy, dest_path.
    form = await request.form(max_files=2, max_fields=5)
    try:
        upload = form.get("file")
        dest_path = await form_text(form, "dest_path")
        if not isinstance(upload, UploadFile):
            raise BadRequest(["file: a file part named 'file' is required."])
        if not isinstance(dest_path, str) or not dest_path:
            raise BadRequest(["dest_path: the destination path in the pod is required."])
        if not dest_path.startswith("/") or "\x00" in dest_path or ".." in dest_path.split("/"):
            raise BadRequest(["dest_path: must be an absolute path without '..' segments."])
        size = await copy_into_container(
            ctx, runtime, container_name(caller.tenant_id, pod_id, ctx.installation_id), upload, dest_path
        )
    finally:
        await form.close()
    await asyncio.to_thread(
        _log, ctx, caller, pod_id, f"'{caller.username}' uploaded a file of {size} bytes to {dest_path}"
    )
    return ok({"dest_path": dest_path, "size": size}, f"File uploaded to {dest_path}.")
