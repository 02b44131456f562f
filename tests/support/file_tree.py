"""What lies below a folder, to compare before and after a call.

Import with ``sys.path`` pointing at this folder (the suite runs with ``--import-mode=importlib``, where test
folders are not packages)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree(top: Path) -> dict[str, str]:
    """Every entry below ``top``: sha256 of files, 'dir' for directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(top))] = "dir"
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(top))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
