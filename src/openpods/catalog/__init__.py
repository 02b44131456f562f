"""The starter template catalog, and the loader ``openpods templates import DIR`` uses.

A catalog is a directory of template files, one template per file (``*.yaml``, ``*.yml`` or ``*.json``; a
file may also hold a list of templates). Other files (this module, READMEs) are ignored. Each template is::

    template_id: postgres            # ^[a-z][a-z0-9]+$, 3-64, not "tags"; unique across the catalog
    description: ...                 # optional, ASCII, <= 255
    metatags: [database, sql]        # optional, list of 1-64 character ASCII strings
    archive_message: ""              # optional, ASCII, <= 255
    tags:                            # at least one, applied in file order
      - tag: "16"                    # optional (default "latest"), [A-Za-z0-9.-]+, <= 80; unique per template
        commit_message: ...          # required, non-empty, ASCII, <= 255
        pod_definition: {...}        # required; a TemplateTagPodDefinition (validated with the domain model)

The loader only reads and validates; importing into a tenant (creating templates, tags and permissions) is
the store's job. Errors are :class:`CatalogError` naming the file and the field, e.g.
``postgres.yaml: tags[0].commit_message: is required``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from openpods.domain.models import TemplateTagPodDefinition
from openpods.domain.templates import (
    DEFAULT_TAG,
    TemplateRefError,
    check_tag,
    check_template_id,
    parse_template_ref,
)

__all__ = [
    "DEFAULT_CATALOG_DIR",
    "CatalogError",
    "CatalogTag",
    "CatalogTemplate",
    "load_catalog",
    "load_catalog_file",
]

#: The catalog shipped with OpenPods (the YAML files beside this module).
DEFAULT_CATALOG_DIR = Path(__file__).resolve().parent
CATALOG_SUFFIXES = (".yaml", ".yml", ".json")
_TEMPLATE_KEYS = frozenset({"template_id", "description", "metatags", "archive_message", "tags"})
_TAG_KEYS = frozenset({"tag", "commit_message", "pod_definition"})


class CatalogError(ValueError):
    """A catalog file is unreadable or invalid. The message starts with the file name and the field."""


@dataclass(frozen=True)
class CatalogTag:
    """One tag of a catalog template. ``pod_definition`` holds only the fields the file sets."""

    tag: str
    commit_message: str
    pod_definition: dict[str, Any]


@dataclass(frozen=True)
class CatalogTemplate:
    """One catalog template with its tags (in file order) and the file it came from."""

    template_id: str
    description: str
    metatags: list[str]
    archive_message: str
    tags: list[CatalogTag]
    source: Path = field(compare=False)


def load_catalog(dir: Path | None = None) -> list[CatalogTemplate]:
    """Load and validate every template file in ``dir`` (default: the shipped catalog), sorted by file name.

    ``dir`` may also be a single file. Sub-directories are not searched. An empty directory gives ``[]``.
    Raises :class:`CatalogError` for a missing directory, an unparsable file, an invalid field, or a
    template id defined twice (the message names both files).
    """
    root = Path(dir) if dir is not None else DEFAULT_CATALOG_DIR
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in CATALOG_SUFFIXES)
    else:
        raise CatalogError(f"{root}: no such catalog directory or file.")
    templates: list[CatalogTemplate] = []
    seen: dict[str, Path] = {}
    for path in files:
        for template in load_catalog_file(path):
            if template.template_id in seen:
                raise CatalogError(
                    f"{path.name}: template_id: {template.template_id!r} is already defined in "
                    f"{seen[template.template_id].name}."
                )
            seen[template.template_id] = path
            templates.append(template)
    return templates


def load_catalog_file(path: Path) -> list[CatalogTemplate]:
    """Load and validate one catalog file (YAML or JSON by suffix; one template or a list of templates)."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogError(f"{name}: cannot read file: {e}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise CatalogError(
            f"{name}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}"
        ) from None
    if isinstance(data, list):
        return [_template(item, path, f"[{i}].") for i, item in enumerate(data)]
    return [_template(data, path, "")]


def _fail(path: Path, where: str, message: str) -> CatalogError:
    return CatalogError(f"{path.name}: {where}: {message}")


def _ascii_text(value: Any, path: Path, where: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _fail(path, where, "must be a string.")
    if required and not value.strip():
        raise _fail(path, where, "is required and must not be empty.")
    if len(value) > 255:
        raise _fail(path, where, "must be 255 characters or fewer.")
    if not value.isascii():
        raise _fail(path, where, "must be ASCII.")
    return value


def _template(data: Any, path: Path, prefix: str) -> CatalogTemplate:
    if not isinstance(data, Mapping):
        raise _fail(path, prefix.rstrip(".") or "top level", "must be a mapping with template_id and tags.")
    unknown = sorted(set(data) - _TEMPLATE_KEYS)
    if unknown:
        raise _fail(
            path, f"{prefix}{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(_TEMPLATE_KEYS))})."
        )
    if "template_id" not in data:
        raise _fail(path, f"{prefix}template_id", "is required.")
    template_id = data["template_id"]
    if not isinstance(template_id, str):
        raise _fail(path, f"{prefix}template_id", "must be a string.")
    try:
        check_template_id(template_id)
    except TemplateRefError as e:
        raise _fail(path, f"{prefix}template_id", str(e)) from None
    description = _ascii_text(data.get("description"), path, f"{prefix}description")
    archive_message = _ascii_text(data.get("archive_message"), path, f"{prefix}archive_message")
    metatags = data.get("metatags") or []
    if not isinstance(metatags, list):
        raise _fail(path, f"{prefix}metatags", "must be a list of strings.")
    for i, tag in enumerate(metatags):
        if not isinstance(tag, str) or not tag or len(tag) > 64 or not tag.isascii():
            raise _fail(path, f"{prefix}metatags[{i}]", "must be a 1-64 character ASCII string.")
    raw_tags = data.get("tags")
    if not isinstance(raw_tags, list) or not raw_tags:
        raise _fail(path, f"{prefix}tags", "is required and must be a non-empty list.")
    tags: list[CatalogTag] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_tags):
        tag = _tag(raw, path, f"{prefix}tags[{i}]")
        if tag.tag in seen:
            raise _fail(path, f"{prefix}tags[{i}].tag", f"tag {tag.tag!r} appears twice in {template_id!r}.")
        seen.add(tag.tag)
        tags.append(tag)
    return CatalogTemplate(
        template_id=template_id,
        description=description,
        metatags=list(metatags),
        archive_message=archive_message,
        tags=tags,
        source=path,
    )


def _tag(data: Any, path: Path, where: str) -> CatalogTag:
    if not isinstance(data, Mapping):
        raise _fail(path, where, "must be a mapping with commit_message and pod_definition.")
    unknown = sorted(set(data) - _TAG_KEYS)
    if unknown:
        raise _fail(
            path, f"{where}.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(_TAG_KEYS))})."
        )
    tag = data.get("tag", DEFAULT_TAG)
    if not isinstance(tag, str):
        raise _fail(path, f"{where}.tag", 'must be a string (quote numeric tags such as "16").')
    try:
        check_tag(tag)
    except TemplateRefError as e:
        raise _fail(path, f"{where}.tag", str(e)) from None
    if "commit_message" not in data:
        raise _fail(path, f"{where}.commit_message", "is required.")
    commit_message = _ascii_text(data["commit_message"], path, f"{where}.commit_message", required=True)
    if "pod_definition" not in data:
        raise _fail(path, f"{where}.pod_definition", "is required.")
    definition = data["pod_definition"]
    if not isinstance(definition, Mapping):
        raise _fail(path, f"{where}.pod_definition", "must be a mapping.")
    try:
        TemplateTagPodDefinition.model_validate(dict(definition))
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise _fail(path, f"{where}.pod_definition.{loc}".rstrip("."), f"{first['msg']}{more}") from None
    parent = definition.get("template")
    if parent:
        try:
            parse_template_ref(parent)
        except TemplateRefError as e:
            raise _fail(path, f"{where}.pod_definition.template", str(e)) from None
    return CatalogTag(tag=tag, commit_message=commit_message, pod_definition=copy.deepcopy(dict(definition)))
