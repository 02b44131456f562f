"""Pure pod rules that depend on the site's configuration: bounds, URLs, the image allowlist, deadlines."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class SiteLimits:
    cpu_min: int = 250
    cpu_max: int = 6000
    mem_min: int = 256
    mem_max: int = 12288
    gpus_max: int = 1
    min_time_to_stop_sec: int = 300
    compute_queues: tuple[str, ...] = ("default",)
    max_networking_stanzas: int = 4


def check_against_site(fields: Mapping[str, Any], limits: SiteLimits) -> list[str]:
    """Errors (``field: message``) for the given pod fields; only the fields present are checked."""
    errors: list[str] = []
    res = fields.get("resources")
    if isinstance(res, Mapping):
        for key, lo, hi in (
            ("cpu_request", limits.cpu_min, limits.cpu_max),
            ("cpu_limit", limits.cpu_min, limits.cpu_max),
            ("mem_request", limits.mem_min, limits.mem_max),
            ("mem_limit", limits.mem_min, limits.mem_max),
            ("gpus", 0, limits.gpus_max),
        ):
            value = res.get(key)
            if value is not None and not lo <= value <= hi:
                errors.append(f"resources, {key}: {value} is out of bounds ({lo}-{hi}).")
        for kind in ("cpu", "mem"):
            req, lim = res.get(f"{kind}_request"), res.get(f"{kind}_limit")
            if req is not None and lim is not None and req > lim:
                errors.append(f"resources, {kind}_request: must not exceed {kind}_limit ({req} > {lim}).")
    for key in ("time_to_stop_default", "time_to_stop_instance"):
        value = fields.get(key)
        if value is not None and value != -1 and value < limits.min_time_to_stop_sec:
            errors.append(f"{key}: must be -1 (unlimited) or at least {limits.min_time_to_stop_sec} seconds.")
    queue = fields.get("compute_queue")
    if queue is not None and queue not in limits.compute_queues:
        errors.append(f"compute_queue: {queue!r} is not one of {', '.join(limits.compute_queues)}.")
    networking = fields.get("networking")
    if isinstance(networking, Mapping) and len(networking) > limits.max_networking_stanzas:
        errors.append(f"networking: at most {limits.max_networking_stanzas} stanzas are allowed.")
    return errors


def stanza_hostname(pod_id: str, key: str, pods_domain: str) -> str:
    """``<pod_id>.<pods_domain>`` for the ``default`` stanza, ``<pod_id>-<key>.<pods_domain>`` otherwise."""
    return f"{pod_id}.{pods_domain}" if key == "default" else f"{pod_id}-{key}.{pods_domain}"


def with_urls(networking: Mapping[str, Mapping[str, Any]], pod_id: str, pods_domain: str) -> dict[str, Any]:
    """The stanzas with ``url`` filled in (the service owns that field); local_only stanzas get none."""
    out: dict[str, Any] = {}
    for key, stanza in networking.items():
        stanza = dict(stanza)
        stanza["url"] = "" if stanza.get("protocol") == "local_only" else stanza_hostname(pod_id, key, pods_domain)
        out[key] = stanza
    return out


def split_pod_id_net(pod_id_net: str) -> tuple[str, str]:
    """``mypod`` → (mypod, default); ``mypod-bolt`` → (mypod, bolt)."""
    pod_id, sep, key = pod_id_net.partition("-")
    return pod_id, (key if sep else "default")


# ------------------------------------------------------------------------------------------- images

_TAG_RE = re.compile(r":([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")


@dataclass(frozen=True)
class ImageRef:
    """An image reference split as the engines read it: ``[registry[:port]/]path[:tag][@digest]``."""

    name: str  # registry (with port) and path, as written
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>", lower case

    @property
    def canonical_name(self) -> str:
        """The name as an engine stores it: ``nginx`` → ``docker.io/library/nginx``; names with a registry
        (a first component with '.' or ':', or ``localhost``) unchanged."""
        first, sep, _rest = self.name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            return self.name
        return f"docker.io/{self.name}" if sep else f"docker.io/library/{self.name}"


def parse_image_ref(ref: str) -> ImageRef:
    """Splits a reference; the tag is looked for only after the last '/', so a registry port is never a tag."""
    name, at, digest = ref.partition("@")
    m = _TAG_RE.search(name.rsplit("/", 1)[-1])
    tag = None
    if m:
        tag = m.group(1)
        name = name[: len(name) - len(m.group(0))]
    return ImageRef(name=name, tag=tag, digest=digest.lower() if at else None)


def split_image(ref: str) -> tuple[str, str | None]:
    """``registry:5000/org/name:tag`` → (``registry:5000/org/name``, ``tag``). A digest counts as the tag."""
    parsed = parse_image_ref(ref)
    if parsed.digest is None:
        return parsed.name, parsed.tag
    return parsed.name, f"{parsed.tag or ''}@{parsed.digest}" if parsed.tag else f"@{parsed.digest}"


def tenant_in_scope(tenant_id: str, scopes: Iterable[str]) -> bool:
    """``**`` (or ``*``) = every tenant, ``<tenant>`` = that tenant, ``-<tenant>`` = deny (deny wins).
    A list with only denials (or empty) admits every tenant not denied."""
    scopes = list(scopes)
    if f"-{tenant_id}" in scopes:
        return False
    positives = [s for s in scopes if not s.startswith("-")]
    if not positives:
        return True
    return "**" in positives or "*" in positives or tenant_id in positives


def _entries_in_scope(tenant_id: str, entries: Iterable[tuple[str, Iterable[str]]],
                      site_list: Iterable[str]) -> list[ImageRef]:
    candidates = [(entry, scopes) for entry, scopes in entries] + [(entry, ("**",)) for entry in site_list]
    return [parse_image_ref(entry) for entry, scopes in candidates if tenant_in_scope(tenant_id, scopes)]


def _tag_allowed(name: str, tag: str | None, allowed: list[ImageRef]) -> bool:
    """``name[:tag]`` (no digest) against entries: an entry without a tag admits every tag, one with a tag
    only that tag; an entry pinned to a digest admits no tag (only its digest)."""
    return any(e.name == name and e.digest is None and (e.tag is None or e.tag == tag) for e in allowed)


def digest_needs_engine(image: str, tenant_id: str, entries: Iterable[tuple[str, Iterable[str]]],
                        site_list: Iterable[str] = ()) -> bool:
    """True when ``image`` carries a digest that no entry names: only the engine can tell which tags that
    digest belongs to (see :func:`image_allowed`'s ``engine_tags``)."""
    ref = parse_image_ref(image)
    if ref.digest is None:
        return False
    allowed = _entries_in_scope(tenant_id, entries, site_list)
    return not any(e.name == ref.name and e.digest == ref.digest for e in allowed)


def image_allowed(image: str, tenant_id: str, entries: Iterable[tuple[str, Iterable[str]]],
                  site_list: Iterable[str] = (), engine_tags: Iterable[str] | None = None) -> bool:
    """An entry without a tag admits every tag of that image; an entry with a tag admits only that tag.

    A reference with a digest (``name@sha256:…``, ``name:tag@sha256:…``) names content, not a tag: engines
    resolve the digest whatever the name or tag says (Podman runs ``allowed@<digest of another image>`` as that
    other image). So it is admitted only if an entry names that digest (``name@sha256:…``), or if
    ``engine_tags`` -- the tags the engine reports for the image with that digest, after it checked that the
    digest is that image's -- include an allowed ``name:tag`` (the reference's own tag, when it has one).
    """
    ref = parse_image_ref(image)
    allowed = _entries_in_scope(tenant_id, entries, site_list)
    if ref.digest is None:
        return _tag_allowed(ref.name, ref.tag, allowed)
    if any(e.name == ref.name and e.digest == ref.digest and (e.tag is None or ref.tag in (None, e.tag))
           for e in allowed):
        return True
    for repo_tag in engine_tags or ():
        engine_ref = parse_image_ref(repo_tag)
        if engine_ref.digest is not None or engine_ref.tag is None:
            continue
        if engine_ref.canonical_name != ref.canonical_name:
            continue
        if ref.tag is not None and engine_ref.tag != ref.tag:
            continue
        if _tag_allowed(ref.name, engine_ref.tag, allowed):
            return True
    return False


# ------------------------------------------------------------------------------------------- deadlines


def time_to_stop_ts(start: datetime | None, default: int | None, instance: int | None) -> datetime | None:
    """When a running instance must be stopped; None for unlimited (-1) or not running."""
    if start is None:
        return None
    seconds = instance if instance is not None else default
    if seconds is None or seconds == -1:
        return None
    return start + timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------- jupyter

JUPYTER_SUFFIX = "jupyter"


def jupyter_pod_id(username: str) -> str:
    """The personal Jupyter pod of a user: ``<username>jupyter`` when the username is already lowercase
    letters and digits (as Tapis names it), else the cleaned name plus 8 hex digits of its hash, so two users
    never share one id ("a.b" and "ab" differ)."""
    base = re.sub(r"[^a-z0-9]", "", username.lower())
    exact = base == username and base[:1].isalpha() and len(base) <= 64 - len(JUPYTER_SUFFIX)
    if exact:
        return f"{base}{JUPYTER_SUFFIX}"
    if not base or not base[0].isalpha():
        base = f"u{base}"
    digest = hashlib.sha256(username.encode()).hexdigest()[:8]
    return f"{base[:64 - len(JUPYTER_SUFFIX) - 8]}{digest}{JUPYTER_SUFFIX}"


def jupyter_id_reserved_for_other(pod_id: str, username: str) -> bool:
    """Pod ids ending in ``jupyter`` are reserved: each user may create only their own Jupyter pod id, so no
    one can squat another user's id and capture their Jupyter sessions and uploads."""
    return pod_id.endswith(JUPYTER_SUFFIX) and pod_id != jupyter_pod_id(username)
