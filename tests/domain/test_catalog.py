"""The starter catalog: it loads, every definition validates, every tag resolves and merges into a valid pod;
and the loader refuses bad files with a message naming the file and the field."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from openpods.catalog import (
    DEFAULT_CATALOG_DIR,
    CatalogError,
    CatalogTemplate,
    load_catalog,
    load_catalog_file,
)
from openpods.domain.models import NewPod, TemplateTagPodDefinition, check_image_reference
from openpods.domain.templates import (
    POD_DEFAULTS,
    TagRecord,
    format_tag_timestamp,
    merge_pod,
    parse_template_ref,
    pin,
    resolve_chain,
    tag_timestamp_sort_key,
    user_set_fields,
)

REQUIRED = {"postgres", "neo4j", "mongo", "redis", "jupyterlab", "codeserver", "ollama", "openwebui"}
PLACEHOLDER_RE = re.compile(r"<<tapissecret_([a-z_]+)>>")
KNOWN_SECRETS = {"user_username", "user_password", "service_username", "service_password"}
T0 = datetime(2025, 1, 30, 17, 14, 14, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> dict[str, CatalogTemplate]:
    return {t.template_id: t for t in load_catalog()}


class CatalogStore:
    """The catalog imported into an in-memory store, one second apart per tag, in file order."""

    def __init__(self, templates: list[CatalogTemplate]) -> None:
        self.rows: dict[str, list[TagRecord]] = {}
        when = T0
        for template in templates:
            rows = self.rows.setdefault(template.template_id, [])
            for tag in template.tags:
                ts = format_tag_timestamp(tag.tag, when, {r.tag_timestamp for r in rows})
                rows.append(TagRecord(template.template_id, tag.tag, ts, when, tag.pod_definition))
                when += timedelta(seconds=1)

    def lookup(self, template_id: str, tag: str | None, timestamp: str | None) -> TagRecord | None:
        tag = tag or "latest"
        rows = [r for r in self.rows.get(template_id, []) if r.tag == tag]
        if timestamp is not None:
            return next((r for r in rows if r.tag_timestamp == f"{tag}@{timestamp}"), None)
        return max(rows, key=lambda r: (r.creation_ts, tag_timestamp_sort_key(r.tag_timestamp)), default=None)


# ---------------------------------------------------------------------------------- the shipped catalog


def test_default_catalog_loads_with_required_templates(catalog: dict[str, CatalogTemplate]) -> None:
    assert set(catalog) >= REQUIRED
    for template in catalog.values():
        assert template.tags, template.template_id
        assert template.description
        assert template.metatags
        assert template.source.parent == DEFAULT_CATALOG_DIR
        assert all(t.commit_message.strip() for t in template.tags)
        assert "latest" in {t.tag for t in template.tags}, f"{template.template_id} has no 'latest' tag"


def test_every_definition_validates(catalog: dict[str, CatalogTemplate]) -> None:
    for template in catalog.values():
        for tag in template.tags:
            model = TemplateTagPodDefinition.model_validate(tag.pod_definition)
            assert model.image, f"{template.template_id}:{tag.tag} has no image"
            check_image_reference(model.image)
            assert model.networking, f"{template.template_id}:{tag.tag} has no networking"
            assert model.time_to_stop_default is not None


def test_every_tag_resolves_in_all_three_forms_and_merges_into_a_valid_pod(
    catalog: dict[str, CatalogTemplate],
) -> None:
    store = CatalogStore(list(catalog.values()))
    for template in catalog.values():
        refs = [template.template_id]
        for tag in template.tags:
            refs.append(f"{template.template_id}:{tag.tag}")
            record = store.lookup(template.template_id, tag.tag, None)
            assert record is not None
            refs.append(pin(record))
        for ref in refs:
            chain = resolve_chain(parse_template_ref(ref), store.lookup)
            assert chain[0].template_id == template.template_id
            body = {"pod_id": "catalogpod", "template": pin(chain[0])}
            derived = merge_pod(body, user_set_fields(body), [r.pod_definition for r in chain], POD_DEFAULTS)
            pod = NewPod.model_validate(derived)
            assert pod.image == chain[0].pod_definition["image"]


def _definition(catalog: dict[str, CatalogTemplate], template_id: str, tag: str = "latest") -> dict[str, Any]:
    return next(t.pod_definition for t in catalog[template_id].tags if t.tag == tag)


@pytest.mark.parametrize(
    ("template_id", "image", "networking"),
    [
        ("postgres", "postgres:16", {"default": ("postgres", 5432)}),
        ("neo4j", "neo4j:5", {"default": ("http", 7474), "bolt": ("tcp", 7687)}),
        ("mongo", "mongo:7", {"default": ("tcp", 27017)}),
        ("redis", "redis:7", {"default": ("tcp", 6379)}),
        ("jupyterlab", "quay.io/jupyter/base-notebook:latest", {"default": ("http", 8888)}),
        ("codeserver", "codercom/code-server:latest", {"default": ("http", 8080)}),
        ("ollama", "ollama/ollama:latest", {"default": ("http", 11434)}),
        ("openwebui", "ghcr.io/open-webui/open-webui:main", {"default": ("http", 8080)}),
    ],
)
def test_images_ports_and_protocols(
    catalog: dict[str, CatalogTemplate], template_id: str, image: str, networking: dict[str, tuple[str, int]]
) -> None:
    definition = _definition(catalog, template_id)
    assert definition["image"] == image
    got = {k: (v["protocol"], v["port"]) for k, v in definition["networking"].items()}
    assert got == networking


def test_mongo_has_the_user_guide_tag(catalog: dict[str, CatalogTemplate]) -> None:
    definition = _definition(catalog, "mongo", "8")
    assert definition["image"] == "mongo:8"
    assert definition["networking"] == {"default": {"protocol": "tcp", "port": 27017}}
    assert definition["time_to_stop_default"] == -1


@pytest.mark.parametrize(
    ("template_id", "variables"),
    [
        ("postgres", {"POSTGRES_USER": "user_username", "POSTGRES_PASSWORD": "user_password"}),
        (
            "mongo",
            {"MONGO_INITDB_ROOT_USERNAME": "user_username", "MONGO_INITDB_ROOT_PASSWORD": "user_password"},
        ),
        ("redis", {"REDIS_PASSWORD": "user_password"}),
        ("jupyterlab", {"JUPYTER_TOKEN": "user_password"}),
        ("codeserver", {"PASSWORD": "user_password"}),
    ],
)
def test_credentials_come_from_placeholders(
    catalog: dict[str, CatalogTemplate], template_id: str, variables: dict[str, str]
) -> None:
    env = _definition(catalog, template_id)["environment_variables"]
    for name, secret in variables.items():
        assert env[name] == f"<<tapissecret_{secret}>>"


def test_neo4j_auth_and_redis_requirepass(catalog: dict[str, CatalogTemplate]) -> None:
    assert (
        _definition(catalog, "neo4j")["environment_variables"]["NEO4J_AUTH"]
        == "neo4j/<<tapissecret_user_password>>"
    )
    redis = _definition(catalog, "redis")
    assert "--requirepass" in " ".join(redis["command"])
    assert "$REDIS_PASSWORD" in " ".join(redis["command"])
    assert "TLS" in catalog["redis"].description and "SNI" in catalog["redis"].description


def test_placeholders_are_known_and_double_bracketed(catalog: dict[str, CatalogTemplate]) -> None:
    for template in catalog.values():
        for tag in template.tags:
            text = json.dumps(tag.pod_definition)
            for name in PLACEHOLDER_RE.findall(text):
                assert name in KNOWN_SECRETS, f"{template.template_id}:{tag.tag} uses <<tapissecret_{name}>>"
            assert "<TAPIS_" not in text.replace("<<TAPIS_", "")


def test_unauthenticated_ai_services_are_behind_tapis_auth(catalog: dict[str, CatalogTemplate]) -> None:
    for template_id in ("ollama", "openwebui"):
        assert _definition(catalog, template_id)["networking"]["default"]["tapis_auth"] is True


def test_user_can_override_only_the_port_of_a_catalog_stanza(catalog: dict[str, CatalogTemplate]) -> None:
    store = CatalogStore(list(catalog.values()))
    chain = resolve_chain(parse_template_ref("ollama"), store.lookup)
    body = {"pod_id": "mypod", "template": pin(chain[0]), "networking": {"default": {"port": 11435}}}
    stored = NewPod.model_validate(body).model_dump()
    derived = merge_pod(stored, user_set_fields(body), [r.pod_definition for r in chain], POD_DEFAULTS)
    assert derived["networking"]["default"] == {"protocol": "http", "port": 11435, "tapis_auth": True}


def test_resources_within_default_bounds(catalog: dict[str, CatalogTemplate]) -> None:
    for template in catalog.values():
        for tag in template.tags:
            res = tag.pod_definition.get("resources", {})
            assert 250 <= res.get("cpu_request", 250) <= res.get("cpu_limit", 2000) <= 6000
            assert 256 <= res.get("mem_request", 256) <= res.get("mem_limit", 3072) <= 12288
            assert res.get("gpus", 0) in (0, 1)


def test_catalog_tags_are_independent_copies() -> None:
    first = load_catalog()
    postgres = next(t for t in first if t.template_id == "postgres")
    postgres.tags[0].pod_definition["image"] = "changed:1"
    # YAML anchors share one object; the loader must copy per tag.
    assert postgres.tags[1].pod_definition["image"] == "postgres:16"


# ---------------------------------------------------------------------------------- loader input


GOOD = {
    "template_id": "mytmpl",
    "description": "mine",
    "metatags": ["a"],
    "tags": [{"tag": "v1", "commit_message": "first", "pod_definition": {"image": "busybox:1"}}],
}


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    elif name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    return path


def test_loads_yaml_json_lists_and_single_files(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", GOOD)
    write(tmp_path, "two.json", {**GOOD, "template_id": "other"})
    write(tmp_path, "three.yml", [{**GOOD, "template_id": "third"}, {**GOOD, "template_id": "fourth"}])
    write(tmp_path, "README.md", "not a template")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "ignored.yaml", {**GOOD, "template_id": "ignored"})
    templates = load_catalog(tmp_path)
    assert [t.template_id for t in templates] == ["mytmpl", "third", "fourth", "other"]
    assert templates[0].tags[0].pod_definition == {"image": "busybox:1"}
    assert templates[0].archive_message == ""
    assert [t.template_id for t in load_catalog(tmp_path / "two.json")] == ["other"]
    assert [t.template_id for t in load_catalog_file(tmp_path / "one.yaml")] == ["mytmpl"]


def test_empty_directory_and_default_tag(tmp_path: Path) -> None:
    assert load_catalog(tmp_path) == []
    data = {"template_id": "deftag", "tags": [{"commit_message": "m", "pod_definition": {}}]}
    write(tmp_path, "x.yaml", data)
    template = load_catalog(tmp_path)[0]
    assert template.tags[0].tag == "latest"
    assert template.description == ""
    assert template.metatags == []


def _bad(tmp_path: Path, data: Any, name: str = "bad.yaml") -> str:
    write(tmp_path, name, data)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def _tag(**kw: Any) -> dict[str, Any]:
    return {**GOOD, "tags": [{**GOOD["tags"][0], **kw}]}


def _without_tag_key(key: str) -> dict[str, Any]:
    tag = {k: v for k, v in GOOD["tags"][0].items() if k != key}
    return {**GOOD, "tags": [tag]}


@pytest.mark.parametrize(
    ("data", "where", "needle"),
    [
        ({k: v for k, v in GOOD.items() if k != "template_id"}, "template_id", "is required"),
        ({**GOOD, "template_id": "Bad_Id"}, "template_id", "lowercase"),
        ({**GOOD, "template_id": "ab"}, "template_id", "3-64"),
        ({**GOOD, "template_id": "tags"}, "template_id", "reserved"),
        ({**GOOD, "template_id": 12345}, "template_id", "must be a string"),
        ({**GOOD, "description": "x" * 256}, "description", "255"),
        ({**GOOD, "description": "caf\u00e9"}, "description", "ASCII"),
        ({**GOOD, "archive_message": 5}, "archive_message", "must be a string"),
        ({**GOOD, "metatags": "a"}, "metatags", "list"),
        ({**GOOD, "metatags": [""]}, "metatags[0]", "1-64"),
        ({**GOOD, "owner": "me"}, "owner", "unknown field"),
        ({**GOOD, "tags": []}, "tags", "non-empty list"),
        ({k: v for k, v in GOOD.items() if k != "tags"}, "tags", "non-empty list"),
        ({**GOOD, "tags": ["v1"]}, "tags[0]", "must be a mapping"),
        (_without_tag_key("commit_message"), "tags[0].commit_message", "is required"),
        (_tag(commit_message="  "), "tags[0].commit_message", "must not be empty"),
        (_tag(commit_message=None), "tags[0].commit_message", "must be a string"),
        (_tag(commit_message="x" * 256), "tags[0].commit_message", "255"),
        (_without_tag_key("pod_definition"), "tags[0].pod_definition", "is required"),
        (_tag(pod_definition=["image"]), "tags[0].pod_definition", "must be a mapping"),
        (
            _tag(pod_definition={"image": "x:1", "pod_id": "x"}),
            "tags[0].pod_definition.pod_id",
            "Extra inputs",
        ),
        (_tag(pod_definition={"status": "ON"}), "tags[0].pod_definition.status", "Extra inputs"),
        (
            _tag(pod_definition={"networking": {"default": {"port": "80x"}}}),
            "tags[0].pod_definition.networking.default.port",
            "",
        ),
        (_tag(pod_definition={"template": "Bad@x"}), "tags[0].pod_definition.template", "needs a tag"),
        (_tag(tag="bad tag"), "tags[0].tag", "letters, digits"),
        (_tag(tag=8), "tags[0].tag", "quote numeric tags"),
        (_tag(extra=1), "tags[0].extra", "unknown field"),
        ({**GOOD, "tags": GOOD["tags"] * 2}, "tags[1].tag", "appears twice"),
        (["not", "templates"], "[0]", "must be a mapping"),
        ("just a string", "top level", "must be a mapping"),
    ],
)
def test_bad_input_names_file_and_field(tmp_path: Path, data: Any, where: str, needle: str) -> None:
    message = _bad(tmp_path, data)
    assert message.startswith(f"bad.yaml: {where}: "), message
    assert needle in message


def test_bad_input_in_list_file_names_index(tmp_path: Path) -> None:
    message = _bad(tmp_path, [GOOD, {**GOOD, "template_id": "x"}])
    assert message.startswith("bad.yaml: [1].template_id: ")


def test_unparsable_files(tmp_path: Path) -> None:
    assert _bad(tmp_path, "a: [unclosed", "broken.yaml").startswith("broken.yaml: not valid YAML")
    (tmp_path / "broken.yaml").unlink()
    assert _bad(tmp_path, "{not json", "broken.json").startswith("broken.json: not valid JSON")


def test_duplicate_template_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.json", GOOD)
    with pytest.raises(CatalogError, match=r"b.json: template_id: 'mytmpl' is already defined in a.yaml"):
        load_catalog(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such catalog directory"):
        load_catalog(tmp_path / "nope")
