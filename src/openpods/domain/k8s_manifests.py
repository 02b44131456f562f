"""Pure builders of the Kubernetes objects of one pod: Pod, Service, Secret, NetworkPolicy (and the shared
storage claim). No I/O and no client library: plain dicts, as sent to the API server.

One OpenPods pod becomes:

- a **Pod** (``restartPolicy: Never``: a finished instance is final, as with Docker) running the
  :class:`~openpods.domain.container_spec.ContainerSpec`: non-privileged, ``allowPrivilegeEscalation: false``,
  every capability dropped except a small allowlist, the runtime's default seccomp profile, no service
  account token, optionally ``runAsNonRoot``; requests/limits in millicpu and MiB; GPUs as an extended
  resource (``nvidia.com/gpu`` by default);
- a **Secret** with the environment (values may be resolved credentials; they never appear in the Pod
  object), used by the Pod through ``envFrom``;
- a **Service** (ClusterIP) with one port per published networking stanza: the proxy routes to
  ``<service>.<namespace>.svc:<port>`` (see :func:`service_endpoints`);
- a **NetworkPolicy** that admits ingress to the published ports only from the proxy's pods, so pods cannot
  reach each other (the Kubernetes form of the Docker runtime's per-pod networks).

Secret, Service and NetworkPolicy carry an ownerReference to the Pod (set once the Pod's uid is known), so
the cluster's garbage collector removes them with it. Every object has the deterministic DNS-safe name of
:func:`object_name` and the identity labels of the spec (``openpods.managed``, ``openpods.tenant``,
``openpods.pod_id``, ``openpods.instance``, ``openpods.installation``) plus ``openpods.object`` (the object
name) that the Service and the NetworkPolicy select on. Label values Kubernetes would refuse are kept as
annotations instead (same key), and :func:`identity_from_metadata` reads both.

Volumes: a :class:`~openpods.domain.container_spec.MountSpec` names a directory on the storage the API
processes see (``storage_root``); on Kubernetes the same storage is a PersistentVolumeClaim (or an NFS export)
that the API pods mount at ``storage_root``, and each pod mounts the part it needs with ``subPath``
(:func:`storage_sub_path` keeps the path-safety rules: normalized, inside the root, no ``..``).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    MANAGED_VALUE,
    ContainerSpec,
)

LABEL_OBJECT = "openpods.object"
ANNOTATION_CONTAINER_NAME = "openpods.container-name"
CONTAINER = "pod"  # name of the one container of every Pod
MAX_NAME = 63  # DNS-1123/1035 label: Service names must be labels, and we use one name for all objects
# Every object uses only GA APIs (v1, apps/v1, networking.k8s.io/v1, rbac.authorization.k8s.io/v1).
SUPPORTED_KUBERNETES_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE", "KILL")

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


# ------------------------------------------------------------------------------------------------ names


def dns_label(text: str, *, max_len: int = MAX_NAME) -> str:
    """A DNS-1035 label (lowercase letters, digits, '-'; starts with a letter, ends with a letter or digit;
    at most ``max_len`` characters) derived deterministically from ``text``.

    Idempotent: a valid label of at most ``max_len`` characters is returned unchanged. Anything else is
    lowercased, invalid runs become '-', and when the result is too long (or had to change) it is cut and a
    hash of the ORIGINAL text is appended, so that different inputs do not collide."""
    if len(text) <= max_len and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", text):
        return text
    base = _NOT_DNS.sub("-", text.lower()).strip("-")
    if not base or not base[0].isalpha():
        base = f"x-{base}".rstrip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    keep = max_len - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}"


def object_name(container_name: str, installation_id: str = "") -> str:
    """The name of every Kubernetes object of the container ``container_name`` (``openpods-<tenant>-<pod>``)
    of installation ``installation_id``: a DNS label of at most 63 characters, with a hashed suffix when the
    parts are too long. Deterministic, so a restarted controller finds the objects again."""
    suffix = installation_id[:8].lower()
    text = f"{container_name}-{suffix}" if suffix and not container_name.endswith(f"-{suffix}") else container_name
    return dns_label(text)


def is_dns_label(text: str) -> bool:
    return len(text) <= MAX_NAME and bool(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", text))


def port_name(index: int) -> str:
    """Service/container port names must be IANA service names (<= 15 chars, lowercase, a letter)."""
    return f"port-{index}"


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class KubeOptions:
    """Site choices that shape every pod's objects (from the ``kubernetes_*`` settings).

    - ``namespace``: where the pods and their objects live.
    - ``run_as_non_root`` / ``run_as_user``: enforce a non-root user (images that need root then fail to start,
      which is the point); ``run_as_user`` 0 means "the image's user".
    - ``capabilities``: added back after dropping ALL (ignored with ``run_as_non_root``: a non-root user needs none).
    - ``storage_root``: the directory at which the API processes mount the shared storage (MountSpec sources
      live below it; sub-paths are relative to it); ``storage_prefix``: the only directory below it that pods
      may mount from (e.g. ``storage``: never the keys next to it); ``storage_pvc``: the claim that holds it; or
      ``storage_nfs_server``/``storage_nfs_path``.
    - ``proxy_pod_labels``: labels of the proxy's (Traefik's) pods, the only ones the NetworkPolicy admits;
      ``proxy_namespace``: their namespace when it is not ``namespace``.
    - ``gpu_resource``: extended resource name of GPUs.
    - ``image_pull_policy``, ``runtime_class_name`` (e.g. "nvidia" or "gvisor"), ``service_account`` (the
      pods' service account; its token is never mounted).
    """

    namespace: str = "default"
    run_as_non_root: bool = False
    run_as_user: int = 0
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    storage_root: str = ""
    storage_prefix: str = ""
    storage_pvc: str = ""
    storage_nfs_server: str = ""
    storage_nfs_path: str = ""
    proxy_pod_labels: Mapping[str, str] = field(default_factory=lambda: {"app.kubernetes.io/component": "proxy"})
    proxy_namespace: str = ""
    gpu_resource: str = "nvidia.com/gpu"
    image_pull_policy: str = "IfNotPresent"
    runtime_class_name: str = ""
    service_account: str = ""


# ------------------------------------------------------------------------------------------------ labels


def split_labels(labels: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations): label entries whose key or value Kubernetes would refuse as a label become
    annotations under the same key."""
    good: dict[str, str] = {}
    rest: dict[str, str] = {}
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        ok_key = (
            bool(_LABEL_NAME_RE.match(name))
            and len(name) <= 63
            and (not prefix or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN_RE.match(prefix))))
        )
        if ok_key and len(value) <= 63 and _LABEL_VALUE_RE.match(value):
            good[key] = value
        else:
            rest[key] = value
    return good, rest


def identity_from_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """The OpenPods labels of an object: its labels plus the ``openpods.*`` annotations."""
    out = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("openpods.")}
    out.update(meta.get("labels") or {})
    out.pop(ANNOTATION_CONTAINER_NAME, None)
    return out


def managed_selector(installation_id: str = "") -> str:
    """The label selector of every pod this installation manages (one list call)."""
    sel = f"{LABEL_MANAGED}={MANAGED_VALUE}"
    if installation_id:
        sel += f",{LABEL_INSTALLATION}={installation_id}"
    return sel


def _metadata(name: str, spec: ContainerSpec, opts: KubeOptions, owner: Mapping[str, str] | None) -> dict[str, Any]:
    labels, annotations = split_labels(spec.labels)
    labels[LABEL_OBJECT] = name
    labels["app.kubernetes.io/managed-by"] = "openpods"
    annotations[ANNOTATION_CONTAINER_NAME] = spec.name
    meta: dict[str, Any] = {"name": name, "namespace": opts.namespace, "labels": labels,
                            "annotations": annotations}
    if owner:
        meta["ownerReferences"] = [_owner_reference(owner)]
    return meta


def _owner_reference(owner: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"], "controller": False,
            "blockOwnerDeletion": False}


# ------------------------------------------------------------------------------------------------ storage


def storage_sub_path(source: str, storage_root: str, prefix: str = "") -> str:
    """The ``subPath`` of ``source`` (an absolute path the API sees) inside the shared storage mounted at
    ``storage_root``: normalized, relative, never ``..``, and below ``prefix`` when one is given. Raises
    ValueError for a source outside the root (or the prefix)."""
    if not storage_root or not storage_root.startswith("/"):
        raise ValueError("Kubernetes volume mounts need kubernetes_storage_root (an absolute path)")
    root = posixpath.normpath(storage_root)
    src = posixpath.normpath(source)
    if src != source.rstrip("/") or "\x00" in source:
        raise ValueError(f"mount source {source!r} is not a normalized absolute path")
    rel = posixpath.relpath(src, root)
    if rel == "." or rel.startswith("..") or posixpath.isabs(rel) or any(p in ("", ".", "..") for p in rel.split("/")):
        raise ValueError(f"mount source {source!r} is not inside the shared storage {root}")
    if prefix and not rel.startswith(prefix.strip("/") + "/"):
        raise ValueError(f"mount source {source!r} is not below {posixpath.join(root, prefix)}")
    return rel


def _volumes(spec: ContainerSpec, opts: KubeOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not spec.mounts:
        return [], []
    mounts: list[dict[str, Any]] = []
    for m in spec.mounts:
        sub = storage_sub_path(m.source, opts.storage_root, opts.storage_prefix)
        mounts.append({"name": "storage", "mountPath": m.target, "subPath": sub, "readOnly": m.read_only})
    if opts.storage_pvc:
        source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": opts.storage_pvc}}
    elif opts.storage_nfs_server and opts.storage_nfs_path:
        source = {"nfs": {"server": opts.storage_nfs_server, "path": opts.storage_nfs_path}}
    else:
        raise ValueError("volume mounts need kubernetes_storage_pvc or kubernetes_storage_nfs_server/_path")
    return [{"name": "storage", **source}], mounts


# ------------------------------------------------------------------------------------------------ objects


def _quantity_cpu(millicpu: int) -> str:
    return f"{millicpu}m"


def _quantity_mem(mib: int) -> str:
    return f"{mib}Mi"


def _resources(spec: ContainerSpec, opts: KubeOptions) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpu_request_millicpu:
        requests["cpu"] = _quantity_cpu(spec.cpu_request_millicpu)
    if spec.cpu_limit_millicpu:
        limits["cpu"] = _quantity_cpu(spec.cpu_limit_millicpu)
    if spec.mem_request_mib:
        requests["memory"] = _quantity_mem(spec.mem_request_mib)
    if spec.mem_limit_mib:
        limits["memory"] = _quantity_mem(spec.mem_limit_mib)
    if spec.gpus:
        limits[opts.gpu_resource] = str(spec.gpus)  # extended resources: limit only (request defaults to it)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _security_context(opts: KubeOptions) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if opts.run_as_non_root:
        ctx["runAsNonRoot"] = True
        if opts.run_as_user:
            ctx["runAsUser"] = opts.run_as_user
    elif opts.capabilities:
        ctx["capabilities"]["add"] = list(opts.capabilities)
    return ctx


def check_env_names(env: Mapping[str, str]) -> None:
    """Kubernetes accepts only C-like environment variable names (``[-._a-zA-Z][-._a-zA-Z0-9]*``)."""
    for key in env:
        if not _ENV_NAME_RE.match(key):
            raise ValueError(f"environment variable name {key!r} is not valid on Kubernetes")


def secret_manifest(name: str, spec: ContainerSpec, opts: KubeOptions,
                    owner: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Secret holding the container's environment (``stringData``: the API server encodes it)."""
    check_env_names(spec.env)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _metadata(name, spec, opts, owner),
            "type": "Opaque", "stringData": dict(spec.env)}


def pod_manifest(name: str, spec: ContainerSpec, opts: KubeOptions) -> dict[str, Any]:
    """The Pod of ``spec``. Ulimits have no per-container setting in Kubernetes (the node's apply)."""
    check_env_names(spec.env)
    volumes, mounts = _volumes(spec, opts)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": opts.image_pull_policy,
        "securityContext": _security_context(opts),
        "ports": [{"name": port_name(i), "containerPort": p.container_port, "protocol": "TCP"}
                  for i, p in enumerate(spec.ports)],
        "resources": _resources(spec, opts),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.command is not None:
        container["command"] = list(spec.command)
        container["args"] = list(spec.args or [])
    elif spec.args is not None:
        container["args"] = list(spec.args)
    if spec.env:
        container["envFrom"] = [{"secretRef": {"name": name}}]
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                            **({"runAsNonRoot": True} if opts.run_as_non_root else {})},
    }
    if volumes:
        pod_spec["volumes"] = volumes
    if opts.runtime_class_name:
        pod_spec["runtimeClassName"] = opts.runtime_class_name
    if opts.service_account:
        pod_spec["serviceAccountName"] = opts.service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(name, spec, opts, None), "spec": pod_spec}


def service_manifest(name: str, spec: ContainerSpec, opts: KubeOptions,
                     owner: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The ClusterIP Service of the published stanzas; None when nothing is published."""
    published = [(i, p) for i, p in enumerate(spec.ports) if p.publish]
    if not published:
        return None
    ports = [{"name": port_name(i), "port": p.container_port, "targetPort": p.container_port, "protocol": "TCP"}
             for i, p in published]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, spec, opts, owner),
            "spec": {"type": "ClusterIP", "selector": {LABEL_OBJECT: name}, "ports": ports}}


def network_policy_manifest(name: str, spec: ContainerSpec, opts: KubeOptions,
                            owner: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Ingress to the pod only from the proxy's pods, only to its published ports; nothing else (other pods
    included) may connect to it. Egress is not restricted (pods may reach the internet)."""
    published = sorted({p.container_port for p in spec.ports if p.publish})
    ingress: list[dict[str, Any]] = []
    if published:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(opts.proxy_pod_labels)}}
        if opts.proxy_namespace and opts.proxy_namespace != opts.namespace:
            peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": opts.proxy_namespace}}
        ingress.append({
            "from": [peer],
            "ports": [{"protocol": "TCP", "port": p} for p in published],
        })
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(name, spec, opts, owner),
            "spec": {"podSelector": {"matchLabels": {LABEL_OBJECT: name}}, "policyTypes": ["Ingress"],
                     "ingress": ingress}}


def storage_claim_manifest(name: str, namespace: str, *, size_gib: int, storage_class: str = "",
                           access_mode: str = "ReadWriteMany") -> dict[str, Any]:
    """The shared storage claim (ReadWriteMany: the API pods and every pod mount it at once)."""
    spec: dict[str, Any] = {"accessModes": [access_mode], "resources": {"requests": {"storage": f"{size_gib}Gi"}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "openpods"}},
            "spec": spec}


@dataclass(frozen=True)
class PodObjects:
    """Every object of one pod, in creation order after the Pod (which comes first: its uid owns the rest)."""

    name: str
    pod: dict[str, Any]
    secret: dict[str, Any] | None
    service: dict[str, Any] | None
    network_policy: dict[str, Any]

    def dependents(self, owner: Mapping[str, str] | None) -> list[dict[str, Any]]:
        """Secret, Service, NetworkPolicy, with the ownerReference to the Pod ``owner`` (name, uid)."""
        out = [o for o in (self.secret, self.service, self.network_policy) if o is not None]
        if owner:
            refs = [_owner_reference(owner)]
            out = [{**o, "metadata": {**o["metadata"], "ownerReferences": refs}} for o in out]
        return out


def build_pod_objects(spec: ContainerSpec, opts: KubeOptions, installation_id: str = "") -> PodObjects:
    """All objects of ``spec``. Raises ValueError when the spec cannot run on Kubernetes (an environment
    variable name Kubernetes refuses, a mount outside the shared storage, mounts without shared storage)."""
    installation = installation_id or spec.labels.get(LABEL_INSTALLATION, "")
    name = object_name(spec.name, installation)
    return PodObjects(
        name=name,
        pod=pod_manifest(name, spec, opts),
        secret=secret_manifest(name, spec, opts) if spec.env else None,
        service=service_manifest(name, spec, opts),
        network_policy=network_policy_manifest(name, spec, opts),
    )


def service_endpoints(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, str]:
    """Stanza -> ``<service>.<namespace>.svc:<port>``: where the proxy routes each published stanza (the
    Kubernetes form of ``host_ports``), from the ``openpods.port.<stanza>`` labels of the pod."""
    from openpods.domain.container_spec import published_ports_from_labels

    return {stanza: f"{name}.{namespace}.svc:{port}" for stanza, port in published_ports_from_labels(labels).items()}


__all__ = [
    "ANNOTATION_CONTAINER_NAME",
    "CONTAINER",
    "LABEL_INSTANCE",
    "LABEL_OBJECT",
    "LABEL_POD_ID",
    "LABEL_TENANT",
    "SUPPORTED_KUBERNETES_VERSIONS",
    "KubeOptions",
    "PodObjects",
    "build_pod_objects",
    "dns_label",
    "identity_from_metadata",
    "managed_selector",
    "network_policy_manifest",
    "object_name",
    "pod_manifest",
    "secret_manifest",
    "service_endpoints",
    "service_manifest",
    "storage_claim_manifest",
    "storage_sub_path",
]
