"""The proxy as the API sees it: Traefik settings from the site's settings, and the route table — the Traefik
dynamic config kept up to date from the database by a background task, incrementally (one pod's change
re-renders that pod alone), served from memory on ``/traefik-config`` and, on one machine, pushed to Traefik's
watched file-provider directory."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import json
import logging
import os
import secrets as pysecrets
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import and_, event, func, or_, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from openpods.config import Settings
from openpods.domain import status as st
from openpods.domain.traefik_config import (
    SECTIONS,
    PodFragment,
    PodRoutes,
    ProxyRenderSettings,
    StanzaRoutes,
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
    return replace(base, api_url=api_url(settings), https_redirect_port=public_port, forward_auth_secret=secret)


def routes_file(settings: Settings, secret: str) -> Path:
    """The routes file the supervised Traefik watches (file provider)."""
    from openpods.proxy.traefik import traefik_paths

    return traefik_paths(traefik_settings(settings, secret)).dynamic_dir / ROUTES_FILE


def _members(objects: dict[str, Any]) -> bytes:
    """``{"a":1,"b":2}`` → ``"a":1,"b":2`` (members to join into a bigger object)."""
    return json.dumps(objects, separators=(",", ":"))[1:-1].encode()


@dataclass(slots=True)
class _Entry:
    revision: int
    order: tuple[Any, ...]
    fragment: PodFragment
    parts: tuple[dict[str, bytes], ...]  # per stanza of the fragment: section → JSON members
    joined: dict[str, bytes]  # section → JSON members of all its stanzas (when none is in a hostname conflict)


#: Entries per chunk of the config order. A change re-joins one chunk; the body joins the chunks.
CHUNK = 128


@dataclass(slots=True)
class _Chunk:
    entries: list[_Entry]
    text: dict[str, bytes] | None = None  # section → joined members of its entries; None: to be made


def _assemble_json(members: dict[str, list[bytes]]) -> bytes:
    """The config as JSON from each section's members (the same shape as ``build_config``), joined once: a
    single copy of the (megabytes of) members."""
    pieces: list[bytes] = []

    def obj(section: str) -> None:
        first = True
        for member in members[section]:
            if member:
                if not first:
                    pieces.append(b",")
                pieces.append(member)
                first = False

    tops = [top for top in ("http", "tcp") if any(members[f"{top}.routers"])]
    for n, top in enumerate(tops):
        pieces.append(b"," if n else b"")
        pieces.append(b'"' + top.encode() + b'":{"routers":{')
        obj(f"{top}.routers")
        pieces.append(b'},"services":{')
        obj(f"{top}.services")
        pieces.append(b"}")
        if any(members[f"{top}.middlewares"]):
            pieces.append(b',"middlewares":{')
            obj(f"{top}.middlewares")
            pieces.append(b"}")
        pieces.append(b"}")
    if any(members["tls.options"]):
        pieces.append(b',"tls":{"options":{' if tops else b'"tls":{"options":{')
        obj("tls.options")
        pieces.append(b"}}")
    return b"{" + b"".join(pieces) + b"}"


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


PODS_CHANNEL = "openpods_pods"  # NOTIFY channel of the pods' change trigger (migration 0012)


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
      on the request path; :meth:`wait_for_change` holds a long-poll (``?wait=``) until the next publish.

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
        # The table: entries by pod, the same entries in config order, and what assembling needs to know
        # without looking at every entry (hostname claims, shared objects used, pods with problems).
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._chunks: list[_Chunk] = []  # the entries in config order, in chunks of about CHUNK
        self._claims: Counter[str] = Counter()
        self._conflicts = 0  # hostnames claimed more than once
        self._needs: Counter[str] = Counter()
        self._with_problems: set[tuple[str, str]] = set()
        self._key: tuple[Any, ...] | None = None
        self._revisions_sql: str | None = None
        self._ticks = 0
        self._sync_lock = threading.Lock()
        self._published: tuple[bytes, str] | None = None
        self._published_event = threading.Event()
        self._boot = pysecrets.token_hex(4)
        self._gzip: tuple[str, bytes] | None = None  # (ETag, gzip of that body) for pollers that accept gzip
        self._gzip_wanted = False
        self._generation = 0
        self._reported: dict[tuple[str, str], list[str]] | None = None  # None: not read from the DB yet
        self._report_failed = False
        self._last_errors: dict[tuple[str, str], list[str]] = {}
        self._wake = threading.Event()
        # Long-polls of /traefik-config (routes-sync): futures on their event loops, woken by each publish.
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_lock = threading.Lock()
        self.running = False
        self.listening = False  # LISTENing for other processes' pod changes (PostgreSQL)

    # --- wake-ups ---------------------------------------------------------------------------------------

    def notify(self, keys: Iterable[tuple[str, str]] = ()) -> None:
        """These pods changed: sync them soon (thread-safe)."""
        with self._dirty_lock:
            self._dirty.update(keys)
        self._wake.set()

    def attach(self, sessions: sessionmaker[Session]) -> None:
        """Wake the sync, with the pods written, after every commit that wrote pod rows through this factory."""
        flag = "openpods_pods_written"

        def after_flush(session: Session, _ctx: Any) -> None:
            for obj in (*session.new, *session.dirty, *session.deleted):
                if isinstance(obj, Pod):
                    session.info.setdefault(flag, set()).add((obj.tenant_id, obj.pod_id))

        def after_commit(session: Session) -> None:
            keys = session.info.pop(flag, None)
            if keys:
                self.notify(keys)

        def after_rollback(session: Session, _previous: Any) -> None:
            session.info.pop(flag, None)

        event.listen(sessions, "after_flush", after_flush)
        event.listen(sessions, "after_commit", after_commit)
        event.listen(sessions, "after_soft_rollback", after_rollback)

    async def run(self, interval: float) -> None:
        """Keep the table up to date until cancelled: a thread of its own syncs now, then on every wake-up
        (only the pods named) and at least every ``interval`` seconds (a cheap check of the whole table, for
        changes made by other processes or straight in the database). A thread rather than the event loop:
        a wake-up reaches it in one hop, and the loop never waits for a render. On PostgreSQL a second thread
        LISTENs for the pods' change notifications (a trigger, migration 0012), so changes other processes
        commit wake the sync at once too; the periodic check stays as the safety net."""
        stop = threading.Event()
        threads = [threading.Thread(target=self._sync_forever, args=(interval, stop), name="proxy-routes",
                                    daemon=True)]
        engine = self.sessions.kw.get("bind")
        if engine is not None and engine.dialect.name == "postgresql":
            threads.append(threading.Thread(target=self._listen_forever, args=(engine, stop),
                                            name="proxy-routes-listen", daemon=True))
        self.running = True
        for thread in threads:
            thread.start()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            stop.set()
            self._wake.set()
            for thread in threads:
                await asyncio.to_thread(thread.join, 30)
            self.running = False

    def _listen_forever(self, engine: Any, stop: threading.Event, *, poll_sec: float = 0.5) -> None:
        import psycopg

        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        pause = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {PODS_CHANNEL}")
                    self.listening = True
                    self.notify()  # whatever changed while nobody listened: the cheap whole-table check
                    pause = 0.5
                    while not stop.is_set():
                        # Bounded, so that a stop is seen within poll_sec.
                        for note in conn.notifies(timeout=poll_sec, stop_after=256):
                            tenant_id, _, pod_id = note.payload.partition("\t")
                            self.notify([(tenant_id, pod_id)])
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("not listening for pod changes (%s); retrying in %.1f s (the periodic check "
                            "still runs)", exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, 10.0)
            finally:
                self.listening = False

    def _sync_forever(self, interval: float, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            with self._dirty_lock:
                keys, self._dirty = self._dirty, set()
            try:
                self.sync_once(keys=keys or None)
                if self._gzip_wanted and self._published and (self._gzip is None
                                                              or self._gzip[0] != self._published[1]):
                    self._compress()
            except Exception:
                log.exception("rendering the proxy routes failed; retrying")
                with self._dirty_lock:
                    self._dirty |= keys
                stop.wait(min(interval, 1.0))  # a failing database: do not spin
            if not self._dirty:
                self._wake.wait(interval)

    @property
    def generation(self) -> int:
        """Number of configs published so far (each a different ETag)."""
        return self._generation

    # --- serving ----------------------------------------------------------------------------------------

    def gzipped(self, etag: str) -> bytes | None:
        """The gzip of the published body with this ETag, if made yet (asking makes every next one)."""
        if not self._gzip_wanted:
            self._gzip_wanted = True
            self.notify()  # compress the current one soon
        gz = self._gzip
        return gz[1] if gz is not None and gz[0] == etag else None

    async def wait_for_change(self, etag: str, timeout: float) -> None:
        """Return once the published config's ETag is not ``etag`` (at once if it already is not), or after
        ``timeout`` seconds. A long-poll: the config's consumer asks again right away and so sees each change as
        soon as it is published, with no request in between."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:  # the publisher swaps the config before taking this lock: no lost wake-up
            published = self._published
            if published is not None and published[1] != etag:
                return
            self._waiters.append((loop, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            with self._waiters_lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, waiter))

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: its request is gone
                loop.call_soon_threadsafe(_resolve, waiter)

    def response(self, timeout: float = 10.0) -> tuple[bytes, str] | None:
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

    def sync_once(self, *, keys: Iterable[tuple[str, str]] | None = None, force: bool = False) -> bool:
        """Bring the table up to date with the database; True when the published config changed.

        With ``keys`` (pods known to have changed) only those rows are read. Otherwise a cheap aggregate over
        all pods is compared with the last one, and only when it moved are the routed pods' revisions listed
        (plus every ``full_resync_every`` calls, and with ``force``); either way only pods whose revision
        changed are rendered again."""
        with self._sync_lock:
            with self.sessions() as s:
                self._ticks += 1
                if self._published is None or force or self._ticks % self.full_resync_every == 0:
                    keys = None
                    self._key = None
                if keys is not None:
                    changed = self._refresh_keys(s, list(keys))
                    # Our own change moved the aggregate: take the new one, so that the next periodic check
                    # does not list every pod again. A change another process committed in the same
                    # milliseconds is then found by the full check every ``full_resync_every`` syncs.
                    self._key = self._change_key(s)
                else:
                    key = self._change_key(s)
                    if key == self._key:
                        changed = False
                    else:
                        changed = self._refresh_all(s)
                        self._key = key
            if not changed and self._published is not None:
                if self._report_failed:
                    self._report(self._last_errors)
                return False
            body, errors = self._assemble()
            self.syncs += 1
            # A new revision often renders the same (CREATING → AVAILABLE): then Traefik gets nothing new.
            published = self._published is None or body != self._published[0]
            if published:
                self._generation += 1
                self._published = (body, f'"{self._boot}-{self._generation}"')
                self._published_event.set()
                if self.file_path is not None:
                    self._write_file(body)
                self._wake_waiters()
            if published and self._gzip_wanted:
                self._compress()
            self._last_errors = errors
            self._report(errors)
            return published

    def _compress(self) -> None:
        # Traefik's HTTP provider accepts gzip: ~20x fewer bytes for the API's event loop to send on each
        # poll. Compressed here, once per config (zlib releases the GIL), never per request.
        published = self._published
        if published is not None:
            self._gzip = (published[1], gzip.compress(published[0], compresslevel=1, mtime=0))

    _COLUMNS = (Pod.tenant_id, Pod.pod_id, Pod.revision, Pod.creation_ts, Pod.routes, Pod.host_ports)

    @staticmethod
    def _routed() -> Any:
        return (Pod.status.in_(ROUTED_STATUSES)) & (Pod.status_requested == st.ON)

    def _refresh_all(self, s: Session) -> bool:
        current = self._revisions(s)
        gone = [k for k in self._entries if k not in current]
        for k in gone:
            self._drop(k)
        stale = [k for k, rev in current.items() if (e := self._entries.get(k)) is None or e.revision != rev]
        changed = bool(gone)
        if stale and len(stale) == len(current):
            changed = self._render_rows(s.execute(select(*self._COLUMNS).where(self._routed()))) or changed
        else:
            for i in range(0, len(stale), 500):
                changed = self._render_rows(s.execute(select(*self._COLUMNS).where(
                    self._keys_clause(stale[i:i + 500]), self._routed()))) or changed
        return changed

    def _revisions(self, s: Session) -> dict[tuple[str, str], int]:
        """(tenant, pod) → revision of every routed pod. Straight through the DB-API cursor: this runs every
        few seconds over every pod, and SQLAlchemy's row objects would cost several times the query."""
        if self._revisions_sql is None:
            stmt = select(Pod.tenant_id, Pod.pod_id, Pod.revision).where(self._routed())
            self._revisions_sql = str(stmt.compile(dialect=s.get_bind().dialect,
                                                   compile_kwargs={"literal_binds": True}))
        cursor = s.connection().connection.cursor()
        try:
            cursor.execute(self._revisions_sql)  # constants only: nothing from users in it
            return {(t, p): rev for t, p, rev in cursor.fetchall()}
        finally:
            cursor.close()

    @staticmethod
    def _keys_clause(keys: list[tuple[str, str]]) -> Any:
        # A few pods: OR of primary-key equalities, which SQLite and PostgreSQL answer from the index (SQLite
        # scans the table for a row-value IN).
        if len(keys) <= 64:
            return or_(*(and_(Pod.tenant_id == t, Pod.pod_id == p) for t, p in keys))
        return tuple_(Pod.tenant_id, Pod.pod_id).in_(keys)

    def _refresh_keys(self, s: Session, keys: list[tuple[str, str]]) -> bool:
        changed = False
        for i in range(0, len(keys), 500):
            batch = keys[i:i + 500]
            rows = s.execute(select(*self._COLUMNS).where(self._keys_clause(batch), self._routed())).all()
            found = {(r[0], r[1]) for r in rows}
            for key in batch:
                if key not in found and key in self._entries:
                    self._drop(key)
                    changed = True
            fresh = [r for r in rows if (e := self._entries.get((r[0], r[1]))) is None or e.revision != r[2]]
            changed = self._render_rows(fresh) or changed
        return changed

    def _render_rows(self, rows: Iterable[Any]) -> bool:
        """Render these rows into the table; True when any pod's routes or problems differ from before (a new
        revision that renders the same, e.g. CREATING → AVAILABLE, only updates the revision)."""
        changed = False
        for tenant_id, pod_id, revision, created, stanzas, host_ports in rows:
            # Rows are data, possibly malformed: the renderer validates and reports per pod.
            hostnames = ({k: v.get("url", "") for k, v in stanzas.items() if isinstance(v, dict)}
                         if isinstance(stanzas, dict) else {})
            # ints: host ports on 127.0.0.1 (Docker); strings: host:port endpoints (Kubernetes Services).
            backends = ({k: p if isinstance(p, str) else f"127.0.0.1:{p}" for k, p in host_ports.items()}
                        if isinstance(host_ports, dict) else {})
            pod = PodRoutes(tenant_id=tenant_id, pod_id=pod_id, stanzas=stanzas, hostnames=hostnames,
                            backends=backends)
            rendered = next(render_pod_fragments([pod], self.render))
            parts = tuple({section: _members(objects) for section, objects in stanza.objects.items()}
                          for stanza in rendered.stanzas)
            # Kept without the objects (they live on as JSON in ``parts``): 10,000 pods' worth of small dicts
            # would only make every full garbage collection of this process slower.
            fragment = PodFragment(rendered.tenant_id, rendered.pod_id,
                                   tuple(StanzaRoutes(x.key, x.host, {}, x.needs) for x in rendered.stanzas),
                                   rendered.problems)
            joined: dict[str, list[bytes]] = {}
            for part in parts:
                for section, text in part.items():
                    joined.setdefault(section, []).append(text)
            self.rendered_pods += 1
            entry = _Entry(revision, (created, tenant_id, pod_id), fragment, parts,
                           {k: b",".join(v) for k, v in joined.items()})
            old = self._entries.get((tenant_id, pod_id))
            if old is not None and old.order == entry.order and old.parts == parts and old.fragment == fragment:
                old.revision = revision
                continue
            self._put((tenant_id, pod_id), entry)
            changed = True
        return changed

    def _put(self, key: tuple[str, str], entry: _Entry) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        chunks = self._chunks
        i = max(0, bisect.bisect_right(chunks, entry.order, key=lambda c: c.entries[0].order) - 1)
        if not chunks:
            chunks.append(_Chunk([]))
        chunk = chunks[i]
        bisect.insort(chunk.entries, entry, key=lambda e: e.order)
        chunk.text = None
        if len(chunk.entries) > 2 * CHUNK:
            chunks[i:i + 1] = [_Chunk(chunk.entries[:CHUNK]), _Chunk(chunk.entries[CHUNK:])]
        for stanza in entry.fragment.stanzas:
            self._claims[stanza.host] += 1
            if self._claims[stanza.host] == 2:
                self._conflicts += 1
            self._needs.update(stanza.needs)
        if entry.fragment.problems:
            self._with_problems.add(key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key)
        chunks = self._chunks
        i = max(0, bisect.bisect_right(chunks, entry.order, key=lambda c: c.entries[0].order) - 1)
        chunk = chunks[i]
        chunk.entries.remove(entry)  # dataclass eq: the same pod and revision, i.e. this entry
        chunk.text = None
        if not chunk.entries:
            del chunks[i]
        for stanza in entry.fragment.stanzas:
            self._claims[stanza.host] -= 1
            if self._claims[stanza.host] == 1:
                self._conflicts -= 1
            elif self._claims[stanza.host] == 0:
                del self._claims[stanza.host]
            self._needs.subtract(stanza.needs)
        self._with_problems.discard(key)

    def _assemble(self) -> tuple[bytes, dict[tuple[str, str], list[str]]]:
        members: dict[str, list[bytes]] = {section: [] for section in SECTIONS}
        if self._conflicts == 0:
            # The common case: every stanza is routed. Each chunk keeps its joined members until one of its
            # pods changes, so a change costs one chunk's join plus joining the chunks (C, no Python loop
            # over every pod).
            for chunk in self._chunks:
                if chunk.text is None:
                    collected: dict[str, list[bytes]] = {}
                    for entry in chunk.entries:
                        for section, text in entry.joined.items():
                            collected.setdefault(section, []).append(text)
                    chunk.text = {section: b",".join(texts) for section, texts in collected.items()}
                for section, text in chunk.text.items():
                    members[section].append(text)
            needs = frozenset(n for n, count in self._needs.items() if count > 0)
            errors = {(e.fragment.tenant_id, e.fragment.pod_id): list(e.fragment.problems)
                      for e in (self._entries[k] for k in self._with_problems)}
        else:
            ordered = [entry for chunk in self._chunks for entry in chunk.entries]
            selection = select_routes([e.fragment for e in ordered])
            for pod_index, stanza_index in selection.accepted:
                for section, text in ordered[pod_index].parts[stanza_index].items():
                    members[section].append(text)
            needs, errors = selection.needs, selection.errors
        for section, objects in shared_objects(needs, self.render).items():
            members[section].append(_members(objects))
        return _assemble_json(members), errors

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
            reported = self._reported
            if reported is None:  # first sync of this process: what is recorded already
                with self.sessions() as s:
                    reported = {(t, p): list(e) for t, p, e in s.execute(
                        select(Pod.tenant_id, Pod.pod_id, Pod.proxy_errors)) if e}
            changes = [(k, problems) for k, problems in errors.items() if reported.get(k) != problems]
            changes += [(k, []) for k in reported if k not in errors]
            if changes:
                with transaction(self.sessions) as s:
                    for key, problems in changes:
                        self._set_errors(s, key, problems)
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

