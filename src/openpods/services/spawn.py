"""From a pod row to the container spec of its current instance (derive, allowlist, secrets, mounts)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from openpods.context import AppContext
from openpods.domain.container_spec import (
    ContainerSpec,
    MountSpec,
    build_container_spec,
    parse_ulimit,
)
from openpods.domain.errors import DomainError
from openpods.services import pods as pod_svc
from openpods.services import templates as tpl_svc
from openpods.services.images import check_image_allowed
from openpods.storage.paths import PathNotFound, PathRejected
from openpods.storage.pins import MountPins, PinSet, PinUnavailable
from openpods.store.tables import Pod


class SpawnRefused(Exception):
    """The pod cannot be started as defined (permanent until the definition changes): → ERROR."""


def mount_pins(ctx: AppContext) -> MountPins:
    """This process's pin directory (``<data_dir>/pins``), made once per context."""
    if ctx.mount_pins is None:
        ctx.mount_pins = MountPins(ctx.settings.data_dir / "pins")
    return ctx.mount_pins


def _pinned_source(ctx: AppContext, pins: PinSet | None, kind: str, tenant: str, key: str, sub_path: str) -> str:
    """The bind source of a sub_path mount: a pin point that no symlink swap can redirect (see storage.pins)."""
    if pins is None:
        raise SpawnRefused(f"volume_mounts, {key}: sub_path mounts need pinning, which this process cannot do.")
    ok, why = mount_pins(ctx).available(getattr(ctx.runtime, "base_url", None))
    if not ok:
        raise SpawnRefused(
            f"volume_mounts, {key}: sub_path mounts cannot be made safely here ({why}); ask the operator "
            "(setting volume_mount_pinning)."
        )
    try:
        root = ctx.storage.host_path(kind, tenant, key, "")
        return pins.pin(root, sub_path)
    except (PathRejected, PathNotFound) as exc:
        raise SpawnRefused(f"volume_mounts, {key}: {exc}") from None
    except (ValueError, FileNotFoundError, LookupError) as exc:
        raise SpawnRefused(f"volume_mounts, {key}: {exc}") from None
    except (PinUnavailable, OSError) as exc:
        raise SpawnRefused(f"volume_mounts, {key}: the sub_path could not be pinned: {exc}") from None


def _mounts(ctx: AppContext, pod: Pod, volume_mounts: dict[str, Any], pins: PinSet | None) -> list[MountSpec]:
    mounts: list[MountSpec] = []
    for key, mount in volume_mounts.items():
        kind = mount.get("type")
        if kind not in ("tapisvolume", "tapissnapshot"):
            raise SpawnRefused(f"volume_mounts, {key}: type {kind!r} is not supported by the docker runtime.")
        if ctx.storage is None:
            raise SpawnRefused("volume_mounts: this site has no storage backend configured.")
        object_kind = "volume" if kind == "tapisvolume" else "snapshot"
        sub_path = mount.get("sub_path") or ""
        try:
            has_sub_path = any(p not in ("", ".") for p in sub_path.split("/"))
        except AttributeError:
            raise SpawnRefused(f"volume_mounts, {key}: sub_path must be a string.") from None
        # Host bind mounts (the docker runtime) are pinned; other runtimes mount by their own means.
        pinned = has_sub_path and ctx.settings.volume_mount_pinning and getattr(ctx.runtime, "name", "") in (
            "docker", "")
        if pinned:
            source = _pinned_source(ctx, pins, object_kind, pod.tenant_id, key, sub_path)
        else:
            try:
                source = ctx.storage.host_path(object_kind, pod.tenant_id, key, sub_path)
            except (ValueError, FileNotFoundError, LookupError, OSError) as exc:
                raise SpawnRefused(f"volume_mounts, {key}: {exc}") from None
        mounts.append(MountSpec(source=str(source), target=mount.get("mount_path") or "/tapis_volume_mount",
                                read_only=kind == "tapissnapshot"))
    return mounts


def build_spec(
    ctx: AppContext, s: Session, pod: Pod, pins: PinSet | None = None
) -> tuple[ContainerSpec, dict[str, Any]]:
    """The container spec of the pod's current instance, and its derived networking stanzas (what the proxy
    routes). Raises SpawnRefused (with a message for the user) when the definition cannot run.

    ``pins`` receives the pinned sources of sub_path mounts (the caller releases them once the container has
    started); without it, a pod with a sub_path mount is refused while ``volume_mount_pinning`` is on."""
    try:
        derived = tpl_svc.derive(s, pod, ctx.settings)
        check_image_allowed(s, ctx.settings, pod.tenant_id, derived.get("image") or "", ctx=ctx)
    except DomainError as exc:
        raise SpawnRefused(exc.text) from None
    except ValidationError as exc:  # the merged definition breaks a rule its parts kept (e.g. tcp + cors)
        raise SpawnRefused("; ".join(
            f"{', '.join(str(p) for p in err['loc'])}: {str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors())) from None
    secrets = pod_svc.pod_secrets(s, ctx.secrets, pod.tenant_id, pod.pod_id)
    env = pod_svc.substitute_secrets(dict(derived.get("environment_variables") or {}), secrets)
    try:
        spec = build_container_spec(
            tenant_id=pod.tenant_id, pod_id=pod.pod_id, instance_id=pod.instance_id, image=derived["image"],
            command=derived.get("command"), arguments=derived.get("arguments"), env=env,
            networking=derived.get("networking") or {}, resources=derived.get("resources") or {},
            mounts=_mounts(ctx, pod, derived.get("volume_mounts") or {}, pins),
            ulimits=[parse_ulimit(u) for u in ctx.settings.default_ulimits],
            installation_id=ctx.installation_id,
            network=ctx.settings.pod_network,
            cap_drop=ctx.settings.container_cap_drop,
            no_new_privileges=ctx.settings.container_no_new_privileges,
            userns=ctx.settings.container_userns,
        )
    except ValueError as exc:
        raise SpawnRefused(str(exc)) from None
    return spec, derived.get("networking") or {}
