"""Files endpoints shared by volumes and snapshots: storage errors → HTTP, streaming downloads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from starlette.responses import StreamingResponse

from openpods.api.envelope import BadRequest, Conflict, NotFound, TapisError
from openpods.storage.base import (
    AccessDenied,
    FileExists,
    IsADirectory,
    NotADirectory,
    ObjectNotFound,
    PathNotFound,
    PathRejected,
    SizeLimitExceeded,
    SnapshotDestinationRequired,
    StorageUnavailable,
)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    try:
        yield
    except (PathRejected, SnapshotDestinationRequired) as exc:
        raise BadRequest([f"path: {exc}"]) from None
    except (NotADirectory, IsADirectory) as exc:
        raise BadRequest([f"path: {exc}"]) from None
    except (PathNotFound, ObjectNotFound) as exc:
        raise NotFound(str(exc)) from None
    except AccessDenied as exc:
        raise Conflict(str(exc)) from None
    except FileExists as exc:
        raise Conflict(f"{exc} Pass overwrite=true to replace it.") from None
    except SizeLimitExceeded as exc:
        raise TapisError(str(exc), 413) from None
    except StorageUnavailable as exc:
        raise TapisError(str(exc), 503) from None


def file_response(storage: Any, kind: str, tenant_id: str, object_id: str, path: str, zip: bool) -> StreamingResponse:
    """A file as it is (octet-stream); a directory, or anything with zip=true, as a streamed zip."""
    if not path.strip("/"):
        raise BadRequest(["path: a path inside the object is required (the whole volume cannot be downloaded)."])
    with storage_errors():
        info = storage.stat_path(kind, tenant_id, object_id, path)
        if info.type == "dir" or zip:
            if info.type != "dir":
                raise BadRequest(["zip: only directories are zipped; download files as they are."])
            chunks = storage.zip_directory(kind, tenant_id, object_id, path)
            return StreamingResponse(chunks, media_type="application/zip",
                                     headers={"Content-Disposition": disposition(f"{info.name or object_id}.zip")})
        handle, size, name = storage.open_file(kind, tenant_id, object_id, path)

    def stream() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk

    return StreamingResponse(stream(), media_type="application/octet-stream",
                             headers={"Content-Disposition": disposition(name), "Content-Length": str(size)})


def disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact UTF-8 name (RFC 6266 / 5987)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
