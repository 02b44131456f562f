"""A cache of the managed containers kept up to date by the engine's event stream (an informer, as Kubernetes
clients keep one), so that listing them costs one engine call per *changed* container instead of one list
whose cost grows with every container (Podman 4.3: ~1.2 ms per container, ~2.4 s at 2,000).

How it stays right:

- **List, then watch, with no gap.** The stream is opened first, with ``since`` a few seconds in the past (the
  engine replays the events from then on, so none written while the stream starts is lost; Podman starts its
  reader concurrently with the response headers), then one full list is taken. Events of the overlap mark their
  containers again: duplicates cost an inspect, never correctness.
- **Events mark, inspects settle.** Every container event (other than those that change nothing we report: exec,
  attach, health checks, ...) marks its container's name *dirty*. A background thread inspects the dirty names
  shortly after (once per burst: create, init and start come together) and applies the answers (``None``: gone);
  :meth:`ManagedCache.list` inspects whatever is still dirty when it is called (the runtime's own changes, events
  of the last moments), so a list costs one inspect per container changed since, usually none. A burst larger
  than a list is settled by a list instead.
- **Newest observation wins.** Every observation (an inspect, a full list) takes a sequence number *before* it
  asks the engine; an entry is only replaced by an observation that started later, and a removal leaves a
  tombstone with its number. So an inspect that raced with a full list, or an event that arrived while a list
  was in flight, never brings back an older state: the event's mark (taken after the list started) survives the
  list and is inspected afterwards.
- **Never serve what may have missed events.** The cache is *fresh* only while the stream that fed it is
  connected and a full list taken after it connected has been applied. When the stream ends (engine restarted,
  socket error) the cache turns stale at once; :meth:`ManagedCache.list` then lists for real, and the stream is
  reopened with backoff, followed by a new full list.
- **Drift is corrected** by a full list every ``relist_sec``, run in the background (never inside a caller's
  list); containers whose listed state differs from the cached one without a pending mark are counted as drift.

The runtime's own operations (ensure_running, remove, rename) mark their container when they return, so a list
right after them is exact without waiting for the event. Changes made by another process or by the engine
itself (a container that exits) are seen once their event arrives: Podman's file event log is polled about
four times a second, so ``list`` may lag by that much (``Runtime.list_lag_sec``).

Engine notes (Podman 4.3, file events backend, verified): the ``label`` and ``type`` filters of ``GET /events``
work; a container's life emits create, init, start, (exec, exec_died), kill, die, cleanup (twice after a stop;
there is no ``stop`` event), rename (attributes carry the *new* name only) and remove; ``since`` replays from
the event log and then follows it. The event log is shared by every Podman on the host that uses the same
``events_logfile_path`` (default ``/run/libpod/events/events.log``); events of other engines' containers only
cost an inspect that finds nothing. ``events_logger = "none"`` has no events: the stream ends at once, and
the cache stays stale (every list is a real one).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from openpods.runtimes.base import ContainerState

log = logging.getLogger(__name__)

EVENTS = Counter("openpods_engine_events_total", "Container events received from the engine's event stream.")
RELISTS = Counter("openpods_engine_relists_total", "Full container lists taken by the event cache, by reason.",
                  ["reason"])
DRIFT = Counter("openpods_engine_cache_drift_total",
                "Containers whose state a periodic full list corrected in the event cache (missed events).")
STREAM_BREAKS = Counter("openpods_engine_event_stream_breaks_total",
                        "Times the engine's event stream ended or failed (the cache turned stale).")

# Container events that change nothing a ContainerState reports (Docker and Podman names).
IGNORED_ACTIONS = frozenset({
    "attach", "detach", "resize", "top", "export", "copy", "archive-path", "extract-to-dir", "commit", "mount",
    "unmount", "sync", "checkpoint", "health_status", "exec", "exec_create", "exec_start", "exec_die",
    "exec_died", "exec_detach",
})
#: How far before the (re)connection the stream asks the engine to replay events from, seconds (covers a
#: stream reader that starts after the response headers, and coarse engine clocks).
SINCE_MARGIN_SEC = 5.0


def event_names(event: dict[str, Any]) -> list[str]:
    """The container names a ``GET /events`` item says may have changed: its name (and a Docker rename's old
    name); [] for events of other types and for actions that change nothing we report."""
    if (event.get("Type") or "container") != "container":
        return []
    action = str(event.get("Action") or event.get("status") or "")
    if action.partition(":")[0].strip() in IGNORED_ACTIONS:  # Docker: "exec_start: sh -c ..."
        return []
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    names = [str(attrs.get("name") or "").lstrip("/")]
    if attrs.get("oldName"):
        names.append(str(attrs["oldName"]).lstrip("/"))
    return [n for n in names if n]


def event_id(event: dict[str, Any]) -> str:
    return str((event.get("Actor") or {}).get("ID") or event.get("id") or "")


Observed = tuple[ContainerState, str]  # a container's state and its engine id


@dataclass
class _Entry:
    seq: int
    state: ContainerState | None  # None: a tombstone (seen gone at ``seq``)
    cid: str = ""


class ContainerCache:
    """The pure part: entries by container name, sequence numbers, dirty marks. Thread-safe; no I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._floor = 0  # sequence number of the last full list applied
        self._entries: dict[str, _Entry] = {}
        self._ids: dict[str, str] = {}  # engine id -> name, to find a renamed container's old name
        self._dirty: dict[str, int] = {}

    def tick(self) -> int:
        """A new sequence number; take it BEFORE asking the engine for what it will be used with."""
        with self._lock:
            self._seq += 1
            return self._seq

    def mark(self, names: Iterable[str], cid: str = "") -> None:
        """These containers may have changed: the next :meth:`ManagedCache.list` inspects them."""
        with self._lock:
            self._seq += 1
            todo = [n for n in names if n]
            if cid and self._ids.get(cid) and self._ids[cid] not in todo:
                todo.append(self._ids[cid])  # renamed: the old name goes away
            for name in todo:
                self._dirty[name] = self._seq

    def dirty(self) -> list[str]:
        with self._lock:
            return sorted(self._dirty)

    def apply(self, name: str, observed: Observed | None, seq: int) -> bool:
        """Record what an inspect that started at ``seq`` saw of ``name`` (None: no such container). Ignored
        when a later observation is already recorded. Clears the name's mark unless it was marked after
        ``seq``. Returns whether the entry changed."""
        with self._lock:
            if self._dirty.get(name, seq) < seq:
                del self._dirty[name]
            entry = self._entries.get(name)
            if seq <= (entry.seq if entry else self._floor):
                return False
            if entry is not None and entry.cid and self._ids.get(entry.cid) == name:
                del self._ids[entry.cid]
            if observed is None:
                self._entries[name] = _Entry(seq, None)
                return entry is not None and entry.state is not None
            state, cid = observed
            self._entries[name] = _Entry(seq, state, cid)
            if cid:
                self._ids[cid] = name
            return entry is None or entry.state != state

    def apply_list(self, listed: list[Observed], seq: int) -> list[str]:
        """Record a full list that started at ``seq``: entries observed earlier are replaced or dropped, later
        ones (events handled while the list was in flight) are kept, as are marks made after ``seq``. Returns
        the names whose state changed though no mark said so (drift: missed events)."""
        with self._lock:
            if seq <= self._floor:
                return []
            drift: list[str] = []
            seen: set[str] = set()
            for state, cid in listed:
                seen.add(state.name)
                entry = self._entries.get(state.name)
                if entry is not None and entry.seq > seq:
                    continue
                if (entry is not None and state.name not in self._dirty
                        and not _same(entry.state, state)):
                    drift.append(state.name)
                self._entries[state.name] = _Entry(seq, state, cid)
                if cid:
                    self._ids[cid] = state.name
            for name, entry in list(self._entries.items()):
                if name in seen or entry.seq > seq:
                    continue
                if entry.state is not None and name not in self._dirty:
                    drift.append(name)
                del self._entries[name]
            self._ids = {cid: name for cid, name in self._ids.items()
                         if name in self._entries and self._entries[name].cid == cid}
            self._dirty = {n: s for n, s in self._dirty.items() if s > seq}
            self._floor = seq
            return drift

    def snapshot(self) -> list[ContainerState]:
        with self._lock:
            return [e.state for e in self._entries.values() if e.state is not None]

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.state is not None)


def _same(a: ContainerState | None, b: ContainerState) -> bool:
    """Whether a cached state and a listed one agree on what the health loop reads (a list has no timestamps
    and its message is the engine's relative status text)."""
    return a is not None and (a.state, a.instance_id, a.exit_code, a.labels) == (b.state, b.instance_id,
                                                                                 b.exit_code, b.labels)


class EventStream(Protocol):
    """An open ``GET /events`` stream: iterates decoded events; ``close`` may be called from another thread."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class ManagedCache:
    """The informer: a stream thread feeding a :class:`ContainerCache`, and the list that answers from it.

    I/O goes through the callables the runtime gives (blocking; called from this object's threads and from the
    caller's thread of :meth:`list`):

    - ``open_stream(since)``: open the engine's event stream of managed containers from unix time ``since``;
    - ``list_all()``: one full list of the managed containers, with their engine ids;
    - ``inspect(name)``: one container's state and id, None when there is no such container.
    """

    def __init__(self, *, open_stream: Callable[[float], EventStream], list_all: Callable[[], list[Observed]],
                 inspect: Callable[[str], Observed | None], relist_sec: float = 60.0,
                 retry_sec: float = 0.5, max_retry_sec: float = 30.0, inspect_workers: int = 4) -> None:
        self.cache = ContainerCache()
        self._open_stream = open_stream
        self._list_all = list_all
        self._inspect = inspect
        self.relist_sec = relist_sec
        self._retry_sec = retry_sec
        self._max_retry_sec = max_retry_sec
        self._lock = threading.Lock()
        self._fresh = False
        self._closed = False
        self._stop = threading.Event()
        self._stream: EventStream | None = None
        self._thread: threading.Thread | None = None
        self._relisting = False
        self._resolving = False
        self._resolve_again = False
        self._last_relist = 0.0
        self._listeners: list[Callable[[], None]] = []
        # Inspects of list(), the background inspects, the lists after (re)connecting and the periodic lists.
        self._pool = ThreadPoolExecutor(max_workers=inspect_workers, thread_name_prefix="openpods-engine-cache")
        # Counters for tests and benchmarks.
        self.real_lists = 0
        self.cached_lists = 0
        self.inspects = 0

    # ------------------------------------------------------------------------------------ state

    @property
    def fresh(self) -> bool:
        """True while the stream is connected and a full list taken after it connected has been applied."""
        return self._fresh

    def start(self) -> None:
        """Start the stream thread (idempotent; :meth:`list` and :meth:`add_listener` call it)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run_stream, name="openpods-engine-events", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._fresh = False
            stream, thread = self._stream, self._thread
        self._stop.set()
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def break_stream(self) -> None:
        """End the current stream as a failing engine connection would (for tests); it is reopened."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` is called (from the stream thread) after a container event, and when the cache turns fresh
        or stale. It must be quick and thread-safe."""
        with self._lock:
            self._listeners.append(fn)
        self.start()

    def remove_listener(self, fn: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:
                log.exception("engine event listener failed")

    def changed(self, *names: str) -> None:
        """The runtime changed these containers itself: look at them on the next list (or before, in the
        background)."""
        self.cache.mark(names)
        if self._fresh:
            self._kick()

    # ------------------------------------------------------------------------------------ list

    def list(self) -> list[ContainerState]:
        """The managed containers: the cache with every marked container inspected once, when fresh; else a
        real list (which also refreshes the cache). Blocking."""
        self.start()
        if self._fresh:
            dirty = self.cache.dirty()
            if len(dirty) > self._burst_limit():
                return self._relist("burst")  # a list is cheaper than this many inspects
            if dirty:
                try:
                    for _ in self._pool.map(self._resolve, dirty):
                        pass
                except Exception as exc:  # one container the engine will not describe must not stop every list
                    log.info("engine event cache: inspect failed, listing instead: %s", exc)
                    return self._relist("inspect-failed")
            if self._fresh:  # still: the stream did not break meanwhile
                self.cached_lists += 1
                self._maybe_relist_in_background()
                return self.cache.snapshot()
        return self._relist("stale")

    def _burst_limit(self) -> int:
        return max(64, len(self.cache) // 10)

    def _kick(self) -> None:
        """Settle the marks in the background (one worker at a time; marks made meanwhile make it go on)."""
        with self._lock:
            if self._resolving:
                self._resolve_again = True
                return
            self._resolving = True
        try:
            self._pool.submit(self._background_resolve)
        except RuntimeError:  # closed
            self._resolving = False

    def _background_resolve(self) -> None:
        try:
            while not self._stop.wait(0.05):  # a moment, so that one burst of events costs one inspect
                with self._lock:
                    self._resolve_again = False
                dirty = self.cache.dirty()
                if dirty and self._fresh:
                    if len(dirty) > self._burst_limit():
                        self._relist("burst")
                    else:
                        for name in dirty:
                            self._resolve(name)
                with self._lock:
                    if not self._resolve_again:
                        self._resolving = False
                        return
        except Exception as exc:  # the engine may be gone: the stream notices; list() inspects what is left
            log.info("engine event cache: background inspect failed: %s", exc)
        with self._lock:
            self._resolving = False

    def _resolve(self, name: str) -> None:
        seq = self.cache.tick()
        observed = self._inspect(name)
        self.inspects += 1
        self.cache.apply(name, observed, seq)

    def _relist(self, reason: str) -> list[ContainerState]:
        seq = self.cache.tick()
        listed = self._list_all()
        self.real_lists += 1
        RELISTS.labels(reason).inc()
        drift = self.cache.apply_list(listed, seq)
        if drift and reason == "periodic":
            DRIFT.inc(len(drift))
            log.warning("engine event cache: a full list corrected %d container(s) whose events were missed: %s",
                        len(drift), ", ".join(sorted(drift)[:10]))
        self._last_relist = time.monotonic()
        return [state for state, _ in listed]

    def _maybe_relist_in_background(self) -> None:
        with self._lock:
            if self._relisting or self._closed or time.monotonic() - self._last_relist < self.relist_sec:
                return
            self._relisting = True

        def relist() -> None:
            try:
                self._relist("periodic")
            except Exception as exc:  # the engine may be gone: the stream notices and marks the cache stale
                log.warning("engine event cache: periodic list failed: %s", exc)
                self._last_relist = time.monotonic()
            finally:
                self._relisting = False

        try:
            self._pool.submit(relist)
        except RuntimeError:  # closed meanwhile
            self._relisting = False

    # ------------------------------------------------------------------------------------ the stream

    def _run_stream(self) -> None:
        delay = self._retry_sec
        while not self._closed:
            opened = time.monotonic()
            try:
                self._follow()
            except Exception as exc:
                log.info("engine event stream failed: %s", exc)
            else:
                log.info("engine event stream ended")
            was_fresh = self._fresh
            with self._lock:
                self._fresh = False
                self._stream = None
            if self._closed:
                return
            STREAM_BREAKS.inc()
            if was_fresh:
                self._notify()
            if time.monotonic() - opened > self._max_retry_sec:
                delay = self._retry_sec  # it had been working: reconnect soon
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._max_retry_sec)

    def _follow(self) -> None:
        stream = self._open_stream(time.time() - SINCE_MARGIN_SEC)
        with self._lock:
            if self._closed:
                stream.close()
                return
            self._stream = stream
        try:
            # The full list comes AFTER the stream is open (what changes from then on is in the stream; events
            # of the list's own time are replayed too, and only cost an inspect), and runs beside the reading,
            # so the events of its duration are marked as they come rather than after it.
            self._pool.submit(self._connect_relist, stream)
            for event in stream:
                EVENTS.inc()
                names = event_names(event)
                if names:
                    self.cache.mark(names, event_id(event))
                    self._kick()
                    self._notify()
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def _connect_relist(self, stream: EventStream) -> None:
        """The full list after a (re)connection; the cache is fresh once it is applied, provided the same stream
        is still open. A failed list ends the stream, so that both are tried again (with backoff)."""
        try:
            self._relist("connect")
        except Exception as exc:
            log.warning("engine event cache: list after connecting failed: %s", exc)
            with contextlib.suppress(Exception):
                stream.close()
            return
        with self._lock:
            if self._stream is not stream or self._closed:
                return
            self._fresh = True
        self._notify()
