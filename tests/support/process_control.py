"""Control of a test's subprocess: the tests that SIGKILL OpenPods processes share these steps.

Import with ``sys.path`` pointing at this folder (the suite runs with ``--import-mode=importlib``, where test
folders are not packages), as the k8s tests do with ``k8s_support``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


class ProcessControl:
    """For a class whose instances hold their process in ``self.popen`` (None when not running) and write its
    output to ``self.log_path``."""

    def sigkill(self) -> None:
        """SIGKILL, no cleanup of any kind: what a crash does."""
        assert self.popen is not None, "not running"  # type: ignore[attr-defined]
        os.kill(self.popen.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        self.popen.wait(30)  # type: ignore[attr-defined]
        self.popen = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; nothing when not running."""
        popen = self.popen  # type: ignore[attr-defined]
        if popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGTERM)
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(popen.pid, signal.SIGKILL)
            popen.wait(30)
        self.popen = None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
        return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
