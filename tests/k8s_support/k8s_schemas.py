"""Strict validation of Kubernetes objects against the OpenAPI schemas that kubernetes-validate ships.

``kubernetes_validate.validate`` is used as it is when it works. With tapipy installed, pip resolves
jsonschema 4.17 (tapipy → openapi-core → jsonschema-spec pins jsonschema<4.18) and kubernetes-validate 1.33.1,
whose ``validate`` needs jsonschema>=4.18 (``registry=``) although its metadata allows 4.17. For that case
this falls back to the same schema files of the same package, resolved with jsonschema's RefResolver."""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import all_versions, latest_version, major_minor, schema_contents


def schema_version(desired: str) -> str:
    """The newest schema version not newer than ``desired`` (capped at what the package ships)."""
    wanted = major_minor(desired)
    return [v for v in all_versions() if major_minor(v) <= wanted][-1] if wanted <= latest_version() else \
        all_versions()[-1]


def schema_versions(desired: tuple[str, ...]) -> list[str]:
    """The distinct schema versions that validating for each of ``desired`` ("1.29", …) uses."""
    return sorted({schema_version(f"{v}.0") for v in desired}, key=lambda v: tuple(map(int, v.split("."))))


@functools.lru_cache(maxsize=256)
def _validator(filename: str, version: str) -> Any:
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{folder}/{filename}", version)
    defs = schema_contents(f"{folder}/_definitions.json", version)
    resolver = jsonschema.RefResolver.from_schema(schema, store={defs["$id"]: defs})
    return jsonschema.Draft202012Validator(schema, resolver=resolver)


def validate(doc: dict[str, Any], desired: str) -> str:
    """Validate ``doc`` strictly (no unknown fields) for Kubernetes ``desired`` (e.g. "1.31.0"); returns the
    schema version used. Raises jsonschema.ValidationError / kubernetes_validate.ValidationError."""
    version = schema_version(desired)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return version
    except TypeError as exc:
        if "registry" not in str(exc):
            raise
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    _validator(f"{doc['kind'].lower()}-{api_version}.json", version).validate(doc)
    return version
