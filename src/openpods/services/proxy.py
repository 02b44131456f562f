"""The proxy as the API sees it: Traefik settings from the site's settings, and the route table — the Traefik
dynamic config kept up to date from the database by a background task, incrementally (one pod's change
re-renders that pod alone), served from memory on ``/traefik-config`` and, on one machine, pushed to Traefik's
watched file-provider directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets as pysecrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from openpods.config import Settings
from openpods.domain import status as st
from openpods.domain.traefik_config import (
    SECTIONS,
    PodFragment,
    PodRoutes,
    ProxyRenderSettings,
    render_pod_fragments,
    select_routes,
    shared_objects,
)
from openpods.proxy.traefik import AcmeSettings, TraefikSettings, proxy_render_settings
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Pod

log = logging.getLogger(__name__)
#: Statuses whose pods are routed (with status_requested ON and a published port). CREATING too: the host
#: port is known once the container started, so the route is live by the time the health loop says AVAILABLE.
ROUTED_STATUSES = (st.CREATING, st.AVAILABLE)
#: Name of the routes file in Traefik's watched directory (JSON is YAML; Traefik reads .yml/.yaml/.toml).
ROUTES_FILE = "pods.yml"


def api_url(settings: Settings) -> str:
    if settings.proxy_api_url:
        return settings.proxy_api_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def tls_names(settings: Settings) -> tuple[str, ...]:
    names: list[str] = []
    for tenant in settings.all_tenants():
        domain = settings.pods_domain(tenant.tenant_id)
        names += [f"*.{domain}", domain]
    names += [settings.domain, "127.0.0.1"]
    return tuple(dict.fromkeys(names))


def traefik_settings(settings: Settings, secret: str) -> TraefikSettings:
    acme = AcmeSettings(email=settings.acme_email, ca_server=settings.acme_ca_server or None) \
        if settings.acme_email else None
    return TraefikSettings(
        data_dir=settings.data_dir, api_url=api_url(settings), secret=secret,
        http_port=settings.proxy_http_port, https_port=settings.proxy_https_port, bind_host=settings.proxy_bind_host,
        domains=(settings.domain,), tls_names=tls_names(settings),
        tls_cert_file=Path(settings.tls_cert_file) if settings.tls_cert_file else None,
        tls_key_file=Path(settings.tls_key_file) if settings.tls_key_file else None, acme=acme,
        provider=settings.proxy_provider, poll_interval=f"{int(settings.proxy_poll_interval_sec * 1000)}ms",
        access_log=settings.proxy_access_log, access_log_buffer=settings.proxy_access_log_buffer_lines,
    )


def render_settings(settings: Settings, secret: str) -> ProxyRenderSettings:
    base = proxy_render_settings(
        traefik_settings(settings, secret),
        forward_auth_url=api_url(settings) + "/v3/pods/{pod_id_net}/auth?tenant={tenant_id}",
        redirect_http_to_https=settings.redirect_http_to_https,
    )
    public_port = settings.proxy_public_https_port or settings.proxy_https_port
    return replace(base, api_url=api_url(settings), https_redirect_port=public_port)


def routes_file(settings: Settings, secret: str) -> Path:
    """The routes file the supervised Traefik watches (file provider)."""
    from openpods.proxy.traefik import traefik_paths

    return traefik_paths(traefik_settings(settings, secret)).dynamic_dir / ROUTES_FILE


def _members(objects: dict[str, Any]) -> str:
    """``{"a":1,"b":2}`` → ``"a":1,"b":2`` (members to join into a bigger object)."""
    return json.dumps(objects, separators=(",", ":"))[1:-1]


@dataclass(slots=True)
class _Entry:
    revision: int
    order: tuple[Any, ...]
    fragment: PodFragment
    parts: tuple[dict[str, str], ...]  # per stanza of the fragment: section → JSON members


def _assemble_json(members: dict[str, list[str]]) -> bytes:
    """The config as JSON from each section's members; the same shape as ``build_config``."""

    def obj(section: str) -> str:
        return "{" + ",".join(members[section]) + "}"

    tops: list[str] = []
    for top in ("http", "tcp"):
        if members[f"{top}.routers"]:
            inner = [f'"routers":{obj(f"{top}.routers")}', f'"services":{obj(f"{top}.services")}']
            if members[f"{top}.middlewares"]:
                inner.append(f'"middlewares":{obj(f"{top}.middlewares")}')
            tops.append(f'"{top}":{{{",".join(inner)}}}')
    if members["tls.options"]:
        tops.append(f'"tls":{{"options":{obj("tls.options")}}}')
    return ("{" + ",".join(tops) + "}").encode()


class RouteTable:
    """The Traefik dynamic config of this site, kept in memory and updated incrementally.

    - :meth:`sync_once` (blocking; run it in a thread) checks a cheap change key, and only when it moved lists
      the routed pods' revisions, re-renders the pods whose revision changed (a :class:`PodFragment` each,
      serialised once), drops the pods no longer routed, and puts the cached fragments together (hostname
      conflicts, shared objects) into the published JSON — string joins, no re-render, no big ``json.dumps``.
      Per-pod problems are reported here (``proxy_errors`` and one action-log entry per change of them), never
      on Traefik's GET. When :attr:`file_path` is set the JSON is also written there atomically: Traefik's
      file provider sees it within milliseconds (push; the one-machine default).
    - :meth:`run` is the background task: a sync whenever a pod row is committed in this process
      (:meth:`attach` listens on the session factory) and every ``interval`` seconds for changes made by other
      processes (cluster shape) or straight in the database.
    - :meth:`response` is what ``/traefik-config`` serves: the published bytes and their ETag, never rendered
      on the request path.

    Nothing is persisted: after a restart the first sync rebuilds everything from the database.
    """

    def __init__(self, sessions: sessionmaker[Session], render: ProxyRenderSettings, *,
                 file_path: Path | None = None, full_resync_every: int = 20) -> None:
        self.sessions = sessions
        self.render = render
        self.file_path = file_path
        self.full_resync_every = full_resync_every
        self.syncs = 0  # completed syncs (tests, bench)
        self.rendered_pods = 0  # pod fragments rendered so far (tests, bench)
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._sorted: list[_Entry] | None = None
        self._key: tuple[Any, ...] | None = None
        self._ticks = 0
        self._sync_lock = threading.Lock()
        self._published: tuple[bytes, str] | None = None
        self._published_event = threading.Event()
        self._boot = pysecrets.token_hex(4)
        self._generation = 0
        self._reported: dict[tuple[str, str], list[str]] | None = None  # None: not read from the DB yet
        self._report_failed = False
        self._last_errors: dict[tuple[str, str], list[str]] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_wake = False
        self.running = False

    # --- wake-ups ---------------------------------------------------------------------------------------

    def notify(self) -> None:
        """A pod changed: sync soon (thread-safe; a no-op until :meth:`run` started)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            self._pending_wake = True
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nothing left to wake
            loop.call_soon_threadsafe(wake.set)

    def attach(self, sessions: sessionmaker[Session]) -> None:
        """Wake the sync after every commit that wrote a pod row through this session factory."""
        flag = "openpods_pod_written"

        def after_flush(session: Session, _ctx: Any) -> None:
            if not session.info.get(flag) and any(
                isinstance(o, Pod) for o in (*session.new, *session.dirty, *session.deleted)
            ):
                session.info[flag] = True

        def after_commit(session: Session) -> None:
            if session.info.pop(flag, False):
                self.notify()

        def after_rollback(session: Session) -> None:
            session.info.pop(flag, None)

        event.listen(sessions, "after_flush", after_flush)
        event.listen(sessions, "after_commit", after_commit)
        event.listen(sessions, "after_soft_rollback", lambda session, _prev: after_rollback(session))

    async def run(self, interval: float) -> None:
        """Sync now, then on every wake-up and at least every ``interval`` seconds (until cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.running = True
        try:
            while True:
                self._wake.clear()
                self._pending_wake = False
                try:
                    await asyncio.to_thread(self.sync_once)
                except Exception:
                    log.exception("rendering the proxy routes failed; retrying")
                if self._pending_wake:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
        finally:
            self.running = False

    @property
    def generation(self) -> int:
        """Number of configs published so far (each a different ETag)."""
        return self._generation

    # --- serving ----------------------------------------------------------------------------------------

    def response(self, timeout: float = 30.0) -> tuple[bytes, str] | None:
        """(body, ETag) of the published config. Before the first sync: waits for the background task, or
        syncs right here when no task runs (an app used without the controllers' runner). ``None``: not ready."""
        published = self._published
        if published is not None:
            return published
        if self.running:
            self._published_event.wait(timeout)
        else:
            self.sync_once()
        return self._published

    # --- the sync ---------------------------------------------------------------------------------------

    @staticmethod
    def _change_key(s: Session) -> tuple[Any, ...]:
        # Every ORM write bumps the revision; update_ts/status_since catch a delete + create in one go.
        row = s.execute(select(func.count(), func.sum(Pod.revision), func.max(Pod.update_ts),
                               func.max(Pod.status_since))).one()
        return tuple(row)

    def sync_once(self, *, force: bool = False) -> bool:
        """Bring the table up to date with the database; True when the published config changed."""
        with self._sync_lock:
            with self.sessions() as s:
                self._ticks += 1
                key = self._change_key(s)
                full = force or self._published is None or self._ticks % self.full_resync_every == 0
                if key == self._key and not full:
                    if self._report_failed:
                        self._report(self._last_errors)
                    return False
                changed = self._refresh(s)
                self._key = key
            if not changed and self._published is not None:
                if self._report_failed:
                    self._report(self._last_errors)
                return False
            body, errors = self._assemble()
            self._generation += 1
            self._published = (body, f'"{self._boot}-{self._generation}"')
            self._published_event.set()
            self.syncs += 1
            if self.file_path is not None:
                self._write_file(body)
            self._last_errors = errors
            self._report(errors)
            return True

    def _refresh(self, s: Session) -> bool:
        rows = s.execute(
            select(Pod.tenant_id, Pod.pod_id, Pod.revision, Pod.creation_ts)
            .where(Pod.status.in_(ROUTED_STATUSES), Pod.status_requested == st.ON)
        ).all()
        current = {(t, p): (rev, created) for t, p, rev, created in rows}
        entries = self._entries
        gone = [k for k in entries if k not in current]
        for k in gone:
            del entries[k]
        stale = [k for k, (rev, _) in current.items() if (e := entries.get(k)) is None or e.revision != rev]
        if stale:
            self._load(s, stale, len(stale) == len(current))
        if gone or stale:
            self._sorted = None
        return bool(gone or stale)

    def _load(self, s: Session, keys: list[tuple[str, str]], everything: bool) -> None:
        columns = (Pod.tenant_id, Pod.pod_id, Pod.revision, Pod.creation_ts, Pod.routes, Pod.host_ports)
        if everything:
            batches: Iterable[Any] = [s.execute(select(*columns).where(
                Pod.status.in_(ROUTED_STATUSES), Pod.status_requested == st.ON))]
        else:
            batches = (s.execute(select(*columns).where(tuple_(Pod.tenant_id, Pod.pod_id).in_(keys[i:i + 500])))
                       for i in range(0, len(keys), 500))
        for batch in batches:
            for tenant_id, pod_id, revision, created, stanzas, host_ports in batch:
                # Rows are data, possibly malformed: the renderer validates and reports per pod.
                hostnames = ({k: v.get("url", "") for k, v in stanzas.items() if isinstance(v, dict)}
                             if isinstance(stanzas, dict) else {})
                backends = ({k: f"127.0.0.1:{p}" for k, p in host_ports.items()}
                            if isinstance(host_ports, dict) else {})
                pod = PodRoutes(tenant_id=tenant_id, pod_id=pod_id, stanzas=stanzas, hostnames=hostnames,
                                backends=backends)
                fragment = next(render_pod_fragments([pod], self.render))
                parts = tuple({section: _members(objects) for section, objects in stanza.objects.items()}
                              for stanza in fragment.stanzas)
                self._entries[(tenant_id, pod_id)] = _Entry(revision, (created, tenant_id, pod_id), fragment, parts)
                self.rendered_pods += 1

    def _assemble(self) -> tuple[bytes, dict[tuple[str, str], list[str]]]:
        if self._sorted is None:
            self._sorted = sorted(self._entries.values(), key=lambda e: e.order)
        ordered = self._sorted
        selection = select_routes([e.fragment for e in ordered])
        members: dict[str, list[str]] = {section: [] for section in SECTIONS}
        for pod_index, stanza_index in selection.accepted:
            for section, text in ordered[pod_index].parts[stanza_index].items():
                members[section].append(text)
        for section, objects in shared_objects(selection.needs, self.render).items():
            members[section].append(_members(objects))
        return _assemble_json(members), selection.errors

    def _write_file(self, body: bytes) -> None:
        """Atomically replace the routes file; the temporary file lives outside the watched directory, so
        Traefik sees one event for the finished file."""
        assert self.file_path is not None
        path = self.file_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent.parent / f".{path.name}.{pysecrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # --- problems ---------------------------------------------------------------------------------------

    def _report(self, errors: dict[tuple[str, str], list[str]]) -> None:
        """Write each pod's problems to its row (``proxy_errors``) and its action log — once per change of
        them, not per sync — and clear the problems of pods that route cleanly again (or are no longer
        routed). Core UPDATEs: no revision bump, so reporting is not itself a change to re-render."""
        try:
            with transaction(self.sessions) as s:
                reported = self._reported
                if reported is None:
                    reported = {(t, p): list(e) for t, p, e in s.execute(
                        select(Pod.tenant_id, Pod.pod_id, Pod.proxy_errors)) if e}
                for key in [k for k, problems in errors.items() if reported.get(k) != problems]:
                    self._set_errors(s, key, errors[key])
                for key in [k for k in reported if k not in errors]:
                    self._set_errors(s, key, [])
            self._reported = {k: list(v) for k, v in errors.items()}
            self._report_failed = False
        except Exception:
            self._report_failed = True  # retried on the next sync
            log.exception("recording the proxy's per-pod problems failed")

    @staticmethod
    def _set_errors(s: Session, key: tuple[str, str], problems: list[str]) -> None:
        tenant_id, pod_id = key
        current = s.execute(select(Pod.proxy_errors).where(Pod.tenant_id == tenant_id, Pod.pod_id == pod_id)
                            ).scalar_one_or_none()
        if current is None or list(current) == problems:
            return  # no such pod (any more), or another process recorded the same already
        s.execute(update(Pod).where(Pod.tenant_id == tenant_id, Pod.pod_id == pod_id)
                  .values(proxy_errors=problems))
        if problems:
            repo.add_action_log(s, "pod", tenant_id, pod_id, "proxy",
                                "proxy skipped networking: " + "; ".join(problems)[:900])


def make_route_table(settings: Settings, sessions: sessionmaker[Session], secret: str) -> RouteTable:
    table = RouteTable(sessions, render_settings(settings, secret))
    table.attach(sessions)
    return table

