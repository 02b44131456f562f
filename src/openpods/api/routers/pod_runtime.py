"""Operations on a pod's running container: exec_pod_commands and upload_to_pod (ADMIN)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse

from openpods.api.deps import Caller, Ctx
from openpods.api.envelope import BadRequest, Conflict, TapisError, ok
from openpods.api.multipart import SpooledUpload, spool_upload
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
from openpods.storage.spool import spool_dir
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


async def copy_into_container(runtime: Any, name: str, upload: SpooledUpload, dest: str) -> int:
    """Copy a spooled upload into the container through the engine's archive API (no shell needed in the
    image). Returns its size."""
    try:
        await runtime.put_file(name, dest, upload.path)
    except BadDestination as exc:
        raise BadRequest([f"dest_path: {exc}"]) from None
    except ContainerNotRunning:
        raise Conflict("The pod has no running container.") from None
    except RuntimeFailure as exc:
        raise TapisError(f"Container engine error: {exc}", 503) from None
    return upload.size


@router.post("/{pod_id}/upload_to_pod", operation_id="upload_to_pod", summary="upload_to_pod")
async def upload_to_pod(ctx: Ctx, caller: Caller, pod_id: str, request: Request) -> JSONResponse:
    await asyncio.to_thread(_running_pod, ctx, caller, pod_id)
    runtime = _runtime(ctx)
    # The body is read once: the file to one spool file, dest_path (tapipy sends it as a file part) as text.
    async with spool_upload(request, spool_dir(ctx.settings.data_dir), ("dest_path",)) as upload:
        dest_path = upload.fields.get("dest_path")
        if not dest_path:
            raise BadRequest(["dest_path: the destination path in the pod is required."])
        if not dest_path.startswith("/") or "\x00" in dest_path or ".." in dest_path.split("/"):
            raise BadRequest(["dest_path: must be an absolute path without '..' segments."])
        size = await copy_into_container(
            runtime, container_name(caller.tenant_id, pod_id, ctx.installation_id), upload, dest_path
        )
    await asyncio.to_thread(
        _log, ctx, caller, pod_id, f"'{caller.username}' uploaded a file of {size} bytes to {dest_path}"
    )
    return ok({"dest_path": dest_path, "size": size}, f"File uploaded to {dest_path}.")
