"""From a pod row to the container spec of its current instance (derive, allowlist, secrets, mounts)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.orm import Session

from openpods.api.context import AppContext
from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    ContainerSpec,
    MountSpec,
    build_container_spec,
    parse_ulimit,
)
from openpods.services import pods as pod_svc
from openpods.services import templates as tpl_svc
from openpods.services.images import check_image_allowed
from openpods.store.tables import Pod


class SpawnRefused(Exception):
    """The pod cannot be started as defined (permanent until the definition changes): → ERROR."""


def _mounts(ctx: AppContext, pod: Pod, volume_mounts: dict[str, Any]) -> list[MountSpec]:
    mounts: list[MountSpec] = []
    for key, mount in volume_mounts.items():
        kind = mount.get("type")
        if kind not in ("tapisvolume", "tapissnapshot"):
            raise SpawnRefused(f"volume_mounts, {key}: type {kind!r} is not supported by the docker runtime.")
        if ctx.storage is None:
            raise SpawnRefused("volume_mounts: this site has no storage backend configured.")
        object_kind = "volume" if kind == "tapisvolume" else "snapshot"
        try:
            source = ctx.storage.host_path(object_kind, pod.tenant_id, key, mount.get("sub_path") or "")
        except (ValueError, FileNotFoundError, LookupError) as exc:
            raise SpawnRefused(f"volume_mounts, {key}: {exc}") from None
        mounts.append(MountSpec(source=str(source), target=mount.get("mount_path") or "/tapis_volume_mount",
                                read_only=kind == "tapissnapshot"))
    return mounts


def build_spec(ctx: AppContext, s: Session, pod: Pod) -> tuple[ContainerSpec, dict[str, Any]]:
    """The container spec of the pod's current instance, and its derived networking stanzas (what the proxy
    routes). Raises SpawnRefused (with a message for the user) when the definition cannot run."""
    from openpods.api.envelope import TapisError

    try:
        derived = tpl_svc.derive(s, pod, ctx.settings)
        check_image_allowed(s, ctx.settings, pod.tenant_id, derived.get("image") or "", ctx=ctx)
    except TapisError as exc:
        message = exc.message if isinstance(exc.message, str) else "; ".join(exc.message)
        raise SpawnRefused(message) from None
    secrets = pod_svc.pod_secrets(s, ctx.secrets, pod.tenant_id, pod.pod_id)
    env = pod_svc.substitute_secrets(dict(derived.get("environment_variables") or {}), secrets)
    try:
        spec = build_container_spec(
            tenant_id=pod.tenant_id, pod_id=pod.pod_id, instance_id=pod.instance_id, image=derived["image"],
            command=derived.get("command"), arguments=derived.get("arguments"), env=env,
            networking=derived.get("networking") or {}, resources=derived.get("resources") or {},
            mounts=_mounts(ctx, pod, derived.get("volume_mounts") or {}),
            ulimits=[parse_ulimit(u) for u in ctx.settings.default_ulimits],
        )
    except ValueError as exc:
        raise SpawnRefused(str(exc)) from None
    spec = dataclasses.replace(spec, labels={**spec.labels, LABEL_INSTALLATION: ctx.installation_id})
    return spec, derived.get("networking") or {}
