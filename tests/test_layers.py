"""Import direction between OpenPods' packages, read from the source with ``ast`` (no import side effects).

Lowest first: ``domain`` (pure rules) ← ``store``/``auth``/``bus``/``runtimes``/``storage``/``proxy`` (adapters)
← ``context`` (AppContext) ← ``services`` ← ``controllers`` ← ``api``. A module may import from its own layer or
below, never from above; a second runtime or storage backend then plugs in below the services without touching
them. Imports inside functions and under ``if TYPE_CHECKING`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import openpods

SRC = Path(openpods.__file__).parent

ADAPTERS = ("store", "auth", "bus", "runtimes", "storage", "proxy")
UPPER = ("context", "services", "controllers", "api")

# package -> packages it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "domain": (*ADAPTERS, *UPPER),
    **{adapter: UPPER for adapter in ADAPTERS},
    "context": ("services", "controllers", "api"),
    "services": ("controllers", "api"),
    "controllers": ("api",),
}

# (importing module, imported module): why it is allowed anyway.
ALLOWED: dict[tuple[str, str], str] = {
    ("openpods.context", "openpods.services.proxy"):
        "type-only (under TYPE_CHECKING): names the type of AppContext.proxy_config, the render cache the "
        "services make on first use",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``openpods.*`` module the source imports (``from a import b`` counts as ``a.b`` too, since b may be
    a module)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in out if name == "openpods" or name.startswith("openpods.")}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        module = module_name(path, root)
        forbidden = FORBIDDEN.get(package_of(module), ())
        tree = ast.parse(path.read_text(), str(path))
        reported: list[str] = []
        for target in sorted(imported_modules(tree, module, path.name == "__init__.py")):
            if any(target.startswith(done + ".") for done in reported):
                continue  # ``from openpods.api.envelope import BadRequest``: reported once, as the module
            if package_of(target) in forbidden and not any(
                    target == allowed or target.startswith(allowed + ".")
                    for (importer, allowed) in ALLOWED if importer == module):
                reported.append(target)
                found.append(f"{module} imports {target}")
    return found


def test_imports_point_downwards() -> None:
    assert violations() == []


def test_every_package_is_placed() -> None:
    """A new top-level package has to be given its place above (or be a deliberate top-level helper)."""
    top_level_helpers = {"catalog", "config", "bootstrap", "server", "cli", "__init__"}
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert packages - top_level_helpers - set(FORBIDDEN) - {"api"} == set()


def test_allowed_exceptions_are_still_needed() -> None:
    """An exception that no longer matches an import is removed from ALLOWED (it would hide a future one)."""
    for importer, target in ALLOWED:
        path = SRC.parent / Path(*importer.split(".")).with_suffix(".py")
        tree = ast.parse(path.read_text())
        assert any(name == target or name.startswith(target + ".")
                   for name in imported_modules(tree, importer, False)), (importer, target)


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    """The checker itself: an upward import, deferred in a function and relative, is found."""
    root = tmp_path / "openpods"
    (root / "domain").mkdir(parents=True)
    (root / "services").mkdir()
    (root / "__init__.py").write_text("")
    (root / "domain" / "__init__.py").write_text("")
    (root / "services" / "__init__.py").write_text("")
    (root / "domain" / "x.py").write_text("def f():\n    from ..services import y\n")
    (root / "services" / "y.py").write_text("from openpods.api.envelope import BadRequest\n")
    assert violations(root) == ["openpods.domain.x imports openpods.services",
                                "openpods.services.y imports openpods.api.envelope"]
