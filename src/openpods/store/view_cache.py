"""Rendered rows cached by the version they were rendered at (get/list_pods answer unchanged rows and lists
from here; see api.rawjson for how they are rendered)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from typing import Any

from cachetools import LRUCache


class FragmentCache:
    """Rendered rows by ``(tenant, id)`` with the version they were rendered at (bounded: past ``max_rows``
    entries it starts over), and whole rendered lists by scope with the signature (the listed rows' ids and
    revisions) they were rendered for (LRU, at most ``max_list_bytes``)."""

    def __init__(self, max_rows: int = 100_000, max_list_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_rows = max_rows
        self._rows: dict[tuple[str, str], tuple[Any, bytes]] = {}
        self._lists: LRUCache[Any, tuple[str, bytes]] = LRUCache(
            maxsize=max_list_bytes, getsizeof=lambda v: len(v[0]) + len(v[1]))
        self._lock = threading.Lock()  # cachetools caches are not thread-safe

    def get_list(self, scope: Any, signature: str) -> bytes | None:
        with self._lock:
            hit = self._lists.get(scope)
        return hit[1] if hit is not None and hit[0] == signature else None

    def put_list(self, scope: Any, signature: str, body: bytes) -> None:
        with self._lock:
            try:
                self._lists[scope] = (signature, body)
            except ValueError:  # larger than the whole cache
                self._lists.pop(scope, None)

    def get(self, tenant_id: str, object_id: str, version: Any) -> bytes | None:
        hit = self._rows.get((tenant_id, object_id))
        return hit[1] if hit is not None and hit[0] == version else None

    def get_many(self, tenant_id: str, keys: Iterable[tuple[str, Any]]) -> dict[str, bytes]:
        """``{id: rendered}`` for the ``(id, version)`` pairs held at that version."""
        rows, out = self._rows, {}
        for object_id, version in keys:
            hit = rows.get((tenant_id, object_id))
            if hit is not None and hit[0] == version:
                out[object_id] = hit[1]
        return out

    def put(self, tenant_id: str, object_id: str, version: Any, rendered: bytes) -> None:
        if len(self._rows) >= self.max_rows:
            self._rows = {}
        self._rows[(tenant_id, object_id)] = (version, rendered)

    def keep_only(self, tenant_id: str, object_ids: Collection[str]) -> None:
        """Forget the tenant's rows that no longer exist (called after a list of all of the tenant's rows)."""
        gone = [k for k in self._rows if k[0] == tenant_id and k[1] not in object_ids]
        for key in gone:
            self._rows.pop(key, None)

    def __len__(self) -> int:
        return len(self._rows)
