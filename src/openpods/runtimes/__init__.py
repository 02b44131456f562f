"""Container runtimes behind one interface (:class:`openpods.runtimes.base.Runtime`).

Backends are imported lazily, so that importing this package needs none of their client libraries::

    runtime = make_runtime("docker", base_url="unix:///run/podman/podman.sock")
"""

from __future__ import annotations

import importlib
from typing import Any

from openpods.runtimes.base import Runtime

# name -> "module:ClassName"; a backend is imported only when it is made.
RUNTIMES: dict[str, str] = {
    "docker": "openpods.runtimes.docker:DockerRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    """The Runtime class registered as ``name``. Raises ValueError for an unknown name."""
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(sorted(RUNTIMES))}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"{target} is not a Runtime")
    return cls


def make_runtime(name: str, **kwargs: Any) -> Runtime:
    """Instantiate the runtime registered as ``name`` with the backend's own keyword arguments."""
    return runtime_class(name)(**kwargs)


__all__ = ["RUNTIMES", "Runtime", "make_runtime", "runtime_class"]
