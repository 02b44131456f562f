"""Unit tests of the pure template logic: references, tag timestamps, resolution, merge, user-set fields."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from openpods.domain.models import NewPod, TemplateTagPodDefinition
from openpods.domain.templates import (
    DEFINITION_FIELDS,
    POD_DEFAULTS,
    SCALAR_FIELDS,
    TagRecord,
    TemplateChainTooDeep,
    TemplateError,
    TemplateLoop,
    TemplateNotFound,
    TemplateRef,
    TemplateRefError,
    definition_from_pod,
    format_tag_timestamp,
    merge_pod,
    parse_tag_timestamp,
    parse_template_ref,
    pin,
    resolve_chain,
    tag_timestamp_sort_key,
    unpin,
    update_user_set,
    user_set_fields,
)

T0 = datetime(2025, 1, 30, 17, 14, 14, tzinfo=UTC)


class Store:
    """An in-memory tag store with the lookup contract of :func:`resolve_chain`."""

    def __init__(self) -> None:
        self.tags: dict[str, list[TagRecord]] = {}
        self.calls: list[tuple[str, str | None, str | None]] = []

    def add(
        self, template_id: str, tag: str, definition: dict[str, Any], created: datetime = T0
    ) -> TagRecord:
        rows = self.tags.setdefault(template_id, [])
        ts = format_tag_timestamp(tag, created, {r.tag_timestamp for r in rows})
        record = TagRecord(template_id, tag, ts, created, definition)
        rows.append(record)
        return record

    def lookup(self, template_id: str, tag: str | None, timestamp: str | None) -> TagRecord | None:
        self.calls.append((template_id, tag, timestamp))
        tag = tag or "latest"
        rows = [r for r in self.tags.get(template_id, []) if r.tag == tag]
        if timestamp is not None:
            return next((r for r in rows if r.tag_timestamp == f"{tag}@{timestamp}"), None)
        if not rows:
            return None
        return max(rows, key=lambda r: (r.creation_ts, tag_timestamp_sort_key(r.tag_timestamp)))

    def exists(self, template_id: str) -> bool:
        return template_id in self.tags


def resolve(store: Store, ref: str, **kw: Any) -> list[TagRecord]:
    return resolve_chain(parse_template_ref(ref), store.lookup, **kw)


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mongo", TemplateRef("mongo", None, None)),
        ("mongo:8", TemplateRef("mongo", "8", None)),
        ("mongo:latest", TemplateRef("mongo", "latest", None)),
        ("neo4j:5.26s3se@2025-01-30-17:14:14", TemplateRef("neo4j", "5.26s3se", "2025-01-30-17:14:14")),
        ("mongo:8@2025-01-30-17:14:14.2", TemplateRef("mongo", "8", "2025-01-30-17:14:14.2")),
        ("mongo:8@2025-01-30-17:14:14.17", TemplateRef("mongo", "8", "2025-01-30-17:14:14.17")),
        ("m0n:A-b.C", TemplateRef("m0n", "A-b.C", None)),
        ("abc", TemplateRef("abc")),
        ("a" * 64, TemplateRef("a" * 64)),
        ("abc:" + "t" * 80, TemplateRef("abc", "t" * 80)),
    ],
)
def test_parse_valid_forms(text: str, expected: TemplateRef) -> None:
    ref = parse_template_ref(text)
    assert ref == expected
    assert str(ref) == text


def test_ref_properties() -> None:
    plain = parse_template_ref("mongo")
    assert plain.effective_tag == "latest"
    assert plain.tag_timestamp is None
    assert not plain.is_pinned
    pinned = parse_template_ref("mongo:8@2025-01-30-17:14:14")
    assert pinned.effective_tag == "8"
    assert pinned.tag_timestamp == "8@2025-01-30-17:14:14"
    assert pinned.is_pinned


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        (" mongo", "whitespace"),
        ("mongo ", "whitespace"),
        ("mon go", "whitespace"),
        ("mongo:8\n", "whitespace"),
        ("mongo@2025-01-30-17:14:14", "needs a tag"),
        ("@2025-01-30-17:14:14", "needs a tag"),
        ("mongo@8:latest", "needs a tag"),
        ("mongo@", "needs a tag"),
        (":8", "name before ':' is empty"),
        (":", "name before ':' is empty"),
        ("mongo:", "tag after ':' is empty"),
        ("mongo:@2025-01-30-17:14:14", "tag between ':' and '@' is empty"),
        ("mongo:8@", "timestamp after '@' is empty"),
        ("Mongo", "lowercase"),
        ("1mongo", "lowercase"),
        ("mon-go", "lowercase"),
        ("mon_go", "lowercase"),
        ("mongo!", "lowercase"),
        ("mo", "3-64"),
        ("a" * 65, "3-64"),
        ("tags", "reserved"),
        ("mongo:ta_g", "letters, digits"),
        ("mongo:ta/g", "letters, digits"),
        ("mongo:8:9", "letters, digits"),
        ("mongo:" + "t" * 81, "at most 80"),
        ("mongo:8@2025-01-30", "YYYY-MM-DD-HH:MM:SS"),
        ("mongo:8@2025-01-30 17:14:14", "whitespace"),
        ("mongo:8@2025-01-30T17:14:14", "YYYY-MM-DD-HH:MM:SS"),
        ("mongo:8@2025-13-01-00:00:00", "not a valid date"),
        ("mongo:8@2025-02-30-00:00:00", "not a valid date"),
        ("mongo:8@2025-01-30-25:00:00", "not a valid date"),
        ("mongo:8@2025-01-30-17:14:14.", "YYYY-MM-DD-HH:MM:SS"),
        ("mongo:8@2025-01-30-17:14:14.0", "YYYY-MM-DD-HH:MM:SS"),
        ("mongo:8@2025-01-30-17:14:14.02", "YYYY-MM-DD-HH:MM:SS"),
        ("mongo:8@2025-01-30-17:14:14.x", "YYYY-MM-DD-HH:MM:SS"),
        ("mongo:8@2025-01-30-17:14:14@2025-01-30-17:14:14", "more than one '@'"),
        ("mongo:8@@2025-01-30-17:14:14", "more than one '@'"),
    ],
)
def test_parse_refuses_malformed(text: str, needle: str) -> None:
    with pytest.raises(TemplateRefError) as info:
        parse_template_ref(text)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TemplateError)


@pytest.mark.parametrize("value", [None, 5, b"mongo", ["mongo"]])
def test_parse_refuses_non_strings(value: Any) -> None:
    with pytest.raises(TemplateRefError, match="must be a string"):
        parse_template_ref(value)


def test_message_quotes_the_reference() -> None:
    with pytest.raises(TemplateRefError, match=r"template reference 'Mongo:8'"):
        parse_template_ref("Mongo:8")


def test_ref_constructor_validates() -> None:
    with pytest.raises(TemplateRefError, match="needs a tag"):
        TemplateRef("mongo", None, "2025-01-30-17:14:14")
    with pytest.raises(TemplateRefError):
        TemplateRef("Mongo")
    with pytest.raises(TemplateRefError):
        TemplateRef("mongo", "")
    with pytest.raises(TemplateRefError):
        TemplateRef("mongo", "8", "yesterday")


# ---------------------------------------------------------------------------------- tag timestamps


def test_format_tag_timestamp_basic() -> None:
    assert format_tag_timestamp("8", T0, set()) == "8@2025-01-30-17:14:14"
    assert format_tag_timestamp("8", T0.replace(microsecond=999_999), set()) == "8@2025-01-30-17:14:14"


def test_format_tag_timestamp_converts_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    assert (
        format_tag_timestamp("8", datetime(2025, 1, 30, 18, 14, 14, tzinfo=cet), ())
        == "8@2025-01-30-17:14:14"
    )
    assert format_tag_timestamp("8", datetime(2025, 1, 30, 17, 14, 14), ()) == "8@2025-01-30-17:14:14"


def test_format_tag_timestamp_same_second_gets_suffix() -> None:
    first = format_tag_timestamp("8", T0, set())
    second = format_tag_timestamp("8", T0, {first})
    third = format_tag_timestamp("8", T0, {first, second})
    assert second == "8@2025-01-30-17:14:14.2"
    assert third == "8@2025-01-30-17:14:14.3"
    # A free gap is reused only if that exact string is free; never collides.
    assert format_tag_timestamp("8", T0, {first, third}) == "8@2025-01-30-17:14:14.2"


def test_format_tag_timestamp_other_tags_do_not_matter() -> None:
    assert format_tag_timestamp("9", T0, {"8@2025-01-30-17:14:14"}) == "9@2025-01-30-17:14:14"


def test_same_second_timestamps_unique_and_referencable() -> None:
    used: set[str] = set()
    for _ in range(25):
        used.add(format_tag_timestamp("latest", T0, used))
    assert len(used) == 25
    for ts in used:
        ref = parse_template_ref(f"mongo:{ts}")
        assert ref.tag_timestamp == ts


def test_format_tag_timestamp_refuses_bad_tag() -> None:
    with pytest.raises(TemplateRefError):
        format_tag_timestamp("bad tag", T0, ())


def test_parse_tag_timestamp_and_sort_key() -> None:
    assert parse_tag_timestamp("8@2025-01-30-17:14:14") == ("8", T0, 1)
    assert parse_tag_timestamp("8@2025-01-30-17:14:14.12") == ("8", T0, 12)
    ordered = [
        "8@2025-01-30-17:14:13",
        "8@2025-01-30-17:14:14",
        "8@2025-01-30-17:14:14.2",
        "8@2025-01-30-17:14:14.10",  # numeric, not lexicographic
        "8@2025-01-30-17:14:15",
    ]
    assert sorted(reversed(ordered), key=tag_timestamp_sort_key) == ordered
    for bad in ("8", "8@", "@2025-01-30-17:14:14", "8@2025-01-30"):
        with pytest.raises(TemplateRefError):
            parse_tag_timestamp(bad)


# ---------------------------------------------------------------------------------- pin / unpin


def test_pin_and_unpin() -> None:
    store = Store()
    rec = store.add("mongo", "8", {"image": "mongo:8"})
    again = store.add("mongo", "8", {"image": "mongo:8.0.1"})
    assert pin(rec) == "mongo:8@2025-01-30-17:14:14"
    assert pin(again) == "mongo:8@2025-01-30-17:14:14.2"
    assert unpin(pin(rec)) == "mongo:8"
    assert unpin(pin(again)) == "mongo:8"
    assert unpin("mongo:8") == "mongo:8"
    assert unpin("mongo") == "mongo"
    with pytest.raises(TemplateRefError):
        unpin("mongo@2025-01-30-17:14:14")
    # A pinned string resolves back to exactly its record.
    assert resolve(store, pin(rec))[0] is rec


# ---------------------------------------------------------------------------------- resolution


@pytest.fixture
def store() -> Store:
    s = Store()
    s.add("mongo", "latest", {"image": "mongo:6"}, T0)
    s.add("mongo", "latest", {"image": "mongo:7"}, T0 + timedelta(hours=1))
    s.add("mongo", "8", {"image": "mongo:8.0.0"}, T0)
    s.add("mongo", "8", {"image": "mongo:8.0.1"}, T0 + timedelta(days=1))
    s.add("mongo", "8", {"image": "mongo:8.0.2"}, T0 + timedelta(days=2))
    return s


def test_resolve_name_is_newest_latest(store: Store) -> None:
    chain = resolve(store, "mongo")
    assert [r.pod_definition["image"] for r in chain] == ["mongo:7"]
    assert store.calls == [("mongo", None, None)]
    assert resolve_chain("mongo", store.lookup) == chain  # a string is parsed
    with pytest.raises(TemplateRefError):
        resolve_chain("mongo@x", store.lookup)


def test_resolve_name_tag_is_newest_of_tag(store: Store) -> None:
    chain = resolve(store, "mongo:8")
    assert chain[0].pod_definition["image"] == "mongo:8.0.2"
    assert pin(chain[0]) == "mongo:8@2025-02-01-17:14:14"


def test_resolve_pinned_is_exact(store: Store) -> None:
    chain = resolve(store, "mongo:8@2025-01-31-17:14:14")
    assert chain[0].pod_definition["image"] == "mongo:8.0.1"
    assert store.calls[-1] == ("mongo", "8", "2025-01-31-17:14:14")


def test_newest_of_same_second_versions() -> None:
    s = Store()
    s.add("base", "v1", {"image": "a:1"}, T0)
    s.add("base", "v1", {"image": "a:2"}, T0)
    s.add("base", "v1", {"image": "a:3"}, T0)
    assert resolve(s, "base:v1")[0].pod_definition["image"] == "a:3"
    assert resolve(s, "base:v1@2025-01-30-17:14:14.2")[0].pod_definition["image"] == "a:2"
    assert resolve(s, "base:v1@2025-01-30-17:14:14")[0].pod_definition["image"] == "a:1"


def test_grab_latest_moves_to_newest(store: Store) -> None:
    old = pin(resolve(store, "mongo:8@2025-01-30-17:14:14")[0])
    store.add("mongo", "8", {"image": "mongo:8.0.3"}, T0 + timedelta(days=3))
    assert resolve(store, old)[0].pod_definition["image"] == "mongo:8.0.0"
    assert resolve(store, unpin(old))[0].pod_definition["image"] == "mongo:8.0.3"


def test_same_tag_in_other_template_never_used() -> None:
    s = Store()
    s.add("alpha", "shared", {"image": "alpha:1"}, T0)
    s.add("beta", "shared", {"image": "beta:1"}, T0 + timedelta(hours=1))  # newer, same tag name
    s.add("beta", "only", {"image": "beta:2"}, T0)
    assert resolve(s, "alpha:shared")[0].pod_definition["image"] == "alpha:1"
    assert resolve(s, "beta:shared")[0].pod_definition["image"] == "beta:1"
    with pytest.raises(TemplateNotFound, match="'alpha' has no tag 'only'"):
        resolve(s, "alpha:only")
    # Same tag_timestamp string in two templates: each resolves within its own template.
    s.add("alpha", "same", {"image": "alpha:same"}, T0)
    s.add("beta", "same", {"image": "beta:same"}, T0)
    assert resolve(s, "beta:same@2025-01-30-17:14:14")[0].pod_definition["image"] == "beta:same"


def test_lookup_returning_another_template_is_a_bug() -> None:
    wrong = TagRecord("beta", "x", "x@2025-01-30-17:14:14", T0, {})
    with pytest.raises(RuntimeError, match="returned a tag of template 'beta'"):
        resolve_chain(parse_template_ref("alpha:x"), lambda *_: wrong)
    with pytest.raises(RuntimeError, match="returned tag"):
        resolve_chain(parse_template_ref("beta:y"), lambda *_: wrong)
    with pytest.raises(RuntimeError, match="returned version"):
        resolve_chain(parse_template_ref("beta:x@2025-01-30-17:14:15"), lambda *_: wrong)


def test_not_found_messages(store: Store) -> None:
    with pytest.raises(TemplateNotFound, match=r"template 'nosuch' not found\.") as info:
        resolve(store, "nosuch:8", template_exists=store.exists)
    assert info.value.ref == TemplateRef("nosuch", "8")
    with pytest.raises(TemplateNotFound, match=r"template 'mongo' has no tag '9'\."):
        resolve(store, "mongo:9", template_exists=store.exists)
    with pytest.raises(TemplateNotFound, match="has no tag version '8@2020-01-01-00:00:00'"):
        resolve(store, "mongo:8@2020-01-01-00:00:00", template_exists=store.exists)
    with pytest.raises(TemplateNotFound, match="or the template does not exist"):
        resolve(store, "nosuch")
    assert isinstance(info.value, LookupError)


def test_name_without_latest_tag_is_not_found() -> None:
    s = Store()
    s.add("onlyv", "v1", {"image": "x:1"})
    with pytest.raises(TemplateNotFound, match="has no tag 'latest'"):
        resolve(s, "onlyv", template_exists=s.exists)


def test_chain_nearest_first_and_deeper_refs_float() -> None:
    s = Store()
    s.add("base", "latest", {"image": "base:1"}, T0)
    s.add("mid", "latest", {"template": "base", "description": "mid"}, T0)
    top = s.add("top", "latest", {"template": "mid:latest"}, T0)
    chain = resolve(s, "top")
    assert [r.template_id for r in chain] == ["top", "mid", "base"]
    assert chain[0] is top
    s.add("base", "latest", {"image": "base:2"}, T0 + timedelta(days=1))
    assert resolve(s, pin(top))[-1].pod_definition["image"] == "base:2"


def test_chain_not_found_names_referrer() -> None:
    s = Store()
    s.add("top", "latest", {"template": "gone:1"}, T0)
    with pytest.raises(
        TemplateNotFound, match=r"'gone' not found \(referenced by template tag top:latest@2025"
    ):
        resolve(s, "top", template_exists=s.exists)


def test_empty_template_in_definition_ends_chain() -> None:
    s = Store()
    s.add("top", "latest", {"template": "", "image": "x:1"}, T0)
    s.add("nul", "latest", {"template": None}, T0)
    assert len(resolve(s, "top")) == 1
    assert len(resolve(s, "nul")) == 1


def test_bad_reference_inside_definition() -> None:
    s = Store()
    s.add("top", "latest", {"template": "Bad@Ref"}, T0)
    with pytest.raises(
        TemplateRefError, match="template tag top:latest@2025-01-30-17:14:14 refers to an invalid"
    ):
        resolve(s, "top")


def test_loop_detection() -> None:
    s = Store()
    s.add("aaa", "latest", {"template": "bbb"}, T0)
    s.add("bbb", "latest", {"template": "aaa:latest"}, T0)
    with pytest.raises(TemplateLoop) as info:
        resolve(s, "aaa")
    msg = str(info.value)
    assert "template 'aaa' appears twice" in msg
    assert "aaa:latest@2025-01-30-17:14:14 -> bbb:latest@2025-01-30-17:14:14 -> aaa:latest" in msg
    assert info.value.chain[-1] == "aaa:latest"
    assert isinstance(info.value, ValueError)


def test_tag_chaining_to_another_tag_of_its_template_is_no_loop() -> None:
    # The original service keys loops on name:tag@timestamp (its test suite chains X:recursive -> X:fastapi).
    s = Store()
    s.add("aaa", "v1", {"image": "x:1", "command": ["one"]}, T0)
    s.add("aaa", "v2", {"template": "aaa:v1", "command": ["two"]}, T0)
    chain = resolve(s, "aaa:v2")
    assert [(r.template_id, r.tag) for r in chain] == [("aaa", "v2"), ("aaa", "v1")]
    # ... and to an older version of its own tag, pinned by timestamp.
    s.add("aaa", "v1", {"template": f"aaa:v1@{chain[1].tag_timestamp.split('@')[1]}"}, T0 + timedelta(seconds=1))
    assert [r.tag for r in resolve(s, "aaa:v1")] == ["v1", "v1"]


def test_loop_same_tag_version_twice() -> None:
    s = Store()
    s.add("aaa", "v1", {"template": "aaa:v2"}, T0)
    s.add("aaa", "v2", {"template": "aaa:v1"}, T0)  # v1 -> v2 -> v1 (the same version again)
    with pytest.raises(TemplateLoop, match="'aaa' appears twice"):
        resolve(s, "aaa:v1")
    s.add("bbb", "latest", {"template": "bbb"}, T0)  # unpinned self-reference
    with pytest.raises(TemplateLoop):
        resolve(s, "bbb")


def test_outer_tag_refuses_only_an_unpinned_way_back_to_it() -> None:
    s = Store()
    s.add("xxx", "fastapi", {"image": "x:1"}, T0)
    s.add("xxx", "other", {"template": "xxx:recursive"}, T0)
    s.add("xxx", "recursive", {"image": "x:0"}, T0)
    # A new version of xxx:recursive chaining to xxx:fastapi: fine (the original's test suite does this).
    assert len(resolve(s, "xxx:fastapi", outer=["xxx:recursive"])) == 1
    # Chaining to xxx:other, which follows xxx:recursive unpinned, would reach the new version itself.
    with pytest.raises(TemplateLoop, match=r"xxx:recursive -> xxx:other@.* -> xxx:recursive"):
        resolve(s, "xxx:other", outer=["xxx:recursive"])
    # Pinned to the existing version of xxx:recursive: no loop.
    pinned = resolve(s, "xxx:recursive")[0].tag_timestamp
    assert len(resolve(s, f"xxx:{pinned}", outer=["xxx:recursive"])) == 1


def test_loop_with_outer_templates() -> None:
    s = Store()
    s.add("base", "latest", {"template": "child"}, T0)
    s.add("child", "latest", {"image": "x:1"}, T0)
    # Adding a tag to "child" whose definition refers to "base" would close a loop.
    with pytest.raises(TemplateLoop, match="child -> base:latest@2025-01-30-17:14:14 -> child"):
        resolve(s, "base", outer=["child"])
    # Saving into a template the pod is built on is refused directly.
    with pytest.raises(TemplateLoop):
        resolve(s, "child", outer=["child"])
    assert len(resolve(s, "child", outer=["other"])) == 1


def _linear_chain(n: int) -> Store:
    s = Store()
    for i in range(n):
        definition: dict[str, Any] = {"description": f"level {i}"}
        if i + 1 < n:
            definition["template"] = f"lvl{i + 1}"
        s.add(f"lvl{i}", "latest", definition, T0)
    return s


def test_chain_depth_default_limit() -> None:
    assert len(resolve(_linear_chain(10), "lvl0")) == 10
    with pytest.raises(TemplateChainTooDeep, match="deeper than 10 levels") as info:
        resolve(_linear_chain(11), "lvl0")
    assert len(info.value.chain) == 11


def test_chain_depth_configurable_and_outer_counts() -> None:
    s = _linear_chain(3)
    assert len(resolve(s, "lvl0", max_depth=3)) == 3
    with pytest.raises(TemplateChainTooDeep, match="deeper than 2 levels"):
        resolve(s, "lvl0", max_depth=2)
    with pytest.raises(TemplateChainTooDeep):
        resolve(s, "lvl0", max_depth=3, outer=["newtop"])
    with pytest.raises(TemplateChainTooDeep):
        resolve(s, "lvl0", max_depth=0)


# ---------------------------------------------------------------------------------- user-set fields


def test_user_set_fields_create_body() -> None:
    body = {
        "pod_id": "mypod",
        "status_requested": "ON",
        "template": "mongo:8",
        "image": "mongo:8",
        "time_to_stop_default": -1,
        "command": None,
        "resources": {"cpu_limit": 3000, "gpus": 1},
        "networking": {"default": {"port": 8000}, "extra": {}},
        "not_a_field": 1,
    }
    assert user_set_fields(body) == {
        "template",
        "image",
        "time_to_stop_default",
        "command",
        "resources.cpu_limit",
        "resources.gpus",
        "networking",
        "networking.default",
        "networking.default.port",
        "networking.extra",
    }


def test_user_set_fields_empty_and_null_resources() -> None:
    assert user_set_fields({}) == set()
    assert user_set_fields({"resources": {}}) == set()
    assert user_set_fields({"resources": None}) == set()
    assert user_set_fields({"networking": {}}) == {"networking"}


def test_update_user_set_replaces_sent_fields() -> None:
    before = user_set_fields(
        {
            "image": "x:1",
            "resources": {"cpu_limit": 3000, "mem_limit": 4000},
            "networking": {"web": {"port": 80}},
        }
    )
    after = update_user_set(before, {"resources": {"gpus": 1}, "description": "d"})
    assert after == {
        "image",
        "description",
        "resources.gpus",
        "networking",
        "networking.web",
        "networking.web.port",
    }
    after2 = update_user_set(after, {"networking": {"web": {"tapis_auth": True}}, "status_requested": "ON"})
    assert {e for e in after2 if e.startswith("networking")} == {
        "networking",
        "networking.web",
        "networking.web.tapis_auth",
    }
    assert "resources.gpus" in after2
    # Never a bare "resources" entry after an update (Tapis bug 6.11).
    assert "resources" not in update_user_set(set(), {"resources": {"cpu_limit": 1000}})


# ---------------------------------------------------------------------------------- merge


def merged(
    pod: dict[str, Any], chain: list[dict[str, Any]], defaults: dict[str, Any] | None = None, user_set=None
) -> dict[str, Any]:
    return merge_pod(
        pod, user_set_fields(pod) if user_set is None else user_set, chain, defaults or POD_DEFAULTS
    )


def test_no_template_gives_user_fields_and_defaults() -> None:
    out = merged({"pod_id": "mypod", "image": "img:1", "description": "mine"}, [])
    assert out["image"] == "img:1"
    assert out["description"] == "mine"
    assert out["time_to_stop_default"] == 43200
    assert out["networking"] == {"default": {"protocol": "http", "port": 5000}}
    assert out["resources"] == POD_DEFAULTS["resources"]
    assert out["environment_variables"] == {}
    assert out["volume_mounts"] == {}
    assert out["compute_queue"] == "default"
    assert out["command"] is None
    assert out["template"] == ""
    assert out["pod_id"] == "mypod"


SCALAR_VALUES: dict[str, tuple[Any, Any, Any]] = {
    "image": ("user:1", "near:1", "deep:1"),
    "description": ("user", "near", "deep"),
    "command": (["user"], ["near"], ["deep"]),
    "arguments": (["--user"], ["--near"], ["--deep"]),
    "compute_queue": ("userq", "nearq", "deepq"),
    "time_to_stop_default": (600, 900, 1200),
    "time_to_stop_instance": (601, 901, 1201),
}


@pytest.mark.parametrize("field", SCALAR_FIELDS)
def test_scalar_precedence(field: str) -> None:
    user, near, deep = SCALAR_VALUES[field]
    defaults = {**POD_DEFAULTS, field: "DEFAULT"}
    chain = [{field: near}, {field: deep}]
    assert merged({field: user}, chain, defaults)[field] == user
    assert merged({}, chain, defaults)[field] == near
    assert merged({}, [{}, {field: deep}], defaults)[field] == deep
    assert merged({}, [{field: None}, {field: deep}], defaults)[field] == deep
    assert merged({}, [{}, {}], defaults)[field] == "DEFAULT"
    # A stored value that the user did not set is ignored (it is a model default or stale).
    assert merge_pod({field: user}, set(), chain, defaults)[field] == near
    # A user-set null falls through to the templates.
    assert merge_pod({field: None}, {field}, chain, defaults)[field] == near


def test_empty_string_means_unset_for_image_and_queue_only() -> None:
    chain = [{"image": "tmpl:1", "compute_queue": "gpu", "description": "tmpl"}]
    out = merged({"image": "", "compute_queue": "", "description": ""}, chain)
    assert out["image"] == "tmpl:1"
    assert out["compute_queue"] == "gpu"
    assert out["description"] == ""  # a user may clear a template's description
    assert merged({}, [{"image": ""}, {"image": "deep:1"}])["image"] == "deep:1"


def test_empty_list_is_a_value() -> None:
    assert merged({}, [{"command": []}, {"command": ["deep"]}])["command"] == []
    assert merged({"command": []}, [{"command": ["near"]}])["command"] == []


def test_field_without_default_and_value_is_left_out() -> None:
    out = merge_pod({"pod_id": "abc", "image": "stale:1"}, set(), [{}], {})
    for field in ("image", "networking", "resources", "environment_variables", "volume_mounts"):
        assert field not in out
    assert out["template"] == ""


def test_resources_per_sub_field() -> None:
    chain = [
        {"resources": {"cpu_limit": 3000, "mem_limit": None}},
        {"resources": {"cpu_limit": 2500, "mem_limit": 5000, "gpus": 1}},
    ]
    pod = {
        "resources": {"cpu_request": 500, "cpu_limit": 2000, "mem_request": 256, "mem_limit": 3072, "gpus": 0}
    }
    out = merge_pod(pod, {"resources.cpu_request"}, chain, POD_DEFAULTS)
    assert out["resources"] == {
        "cpu_request": 500,  # user
        "cpu_limit": 3000,  # nearest template
        "mem_request": 256,  # default
        "mem_limit": 5000,  # deeper template (nearer one's None does not override)
        "gpus": 1,  # deeper template, the stored 0 is not user-set
    }
    # A bare "resources" entry marks every stored sub-field as user-set.
    assert merge_pod(pod, {"resources"}, chain, POD_DEFAULTS)["resources"] == pod["resources"]
    # User-set sub-field missing from the stored value (e.g. after an update) falls through.
    assert (
        merge_pod({"resources": {}}, {"resources.cpu_limit"}, chain, POD_DEFAULTS)["resources"]["cpu_limit"]
        == 3000
    )


def test_resources_site_defaults() -> None:
    defaults = {**POD_DEFAULTS, "resources": {"cpu_request": 100, "cpu_limit": 1000}}
    out = merged({}, [{"resources": {"cpu_limit": 1500}}], defaults)
    assert out["resources"] == {"cpu_request": 100, "cpu_limit": 1500}


def test_environment_variables_per_key() -> None:
    chain = [
        {"environment_variables": {"B": "near", "C": "near"}},
        {"environment_variables": {"A": "deep", "B": "deep"}},
    ]
    out = merged({"environment_variables": {"C": "user", "D": "user"}}, chain)
    assert out["environment_variables"] == {"A": "deep", "B": "near", "C": "user", "D": "user"}
    # Not user-set: the stored env is ignored.
    out = merge_pod({"environment_variables": {"C": "stale"}}, set(), chain, POD_DEFAULTS)
    assert out["environment_variables"] == {"A": "deep", "B": "near", "C": "near"}


def test_use_template_envs_false() -> None:
    chain = [{"environment_variables": {"A": "tmpl"}, "volume_mounts": {"data": {"type": "pvc"}}}]
    env = {"_TAPIS_INTERNAL_USE_TEMPLATE_ENVS": "False", "B": "user"}
    out = merged({"environment_variables": env}, chain)
    assert out["environment_variables"] == env
    assert out["volume_mounts"] == {"data": {"type": "pvc"}}
    env = {"_TAPIS_INTERNAL_USE_TEMPLATE_VOLUMES": "false"}
    out = merged({"environment_variables": env}, chain)
    assert out["environment_variables"] == {"A": "tmpl", **env}
    assert out["volume_mounts"] == {}


def test_volume_mounts_per_key_whole_value() -> None:
    chain = [
        {"volume_mounts": {"shared": {"type": "tapisvolume", "mount_path": "/near"}}},
        {
            "volume_mounts": {
                "shared": {"type": "tapisvolume", "mount_path": "/deep", "sub_path": "x"},
                "scratch": {"type": "pvc", "mount_path": "/scratch"},
            }
        },
    ]
    out = merged({"volume_mounts": {"mine": {"type": "tapisvolume", "mount_path": "/mine"}}}, chain)
    assert out["volume_mounts"] == {
        "shared": {"type": "tapisvolume", "mount_path": "/near"},  # replaced whole: no sub_path "x"
        "scratch": {"type": "pvc", "mount_path": "/scratch"},
        "mine": {"type": "tapisvolume", "mount_path": "/mine"},
    }


def test_none_removes_inherited_key() -> None:
    chain = [
        {"volume_mounts": {"scratch": None}, "networking": {"extra": None}},
        {
            "volume_mounts": {"scratch": {"type": "pvc"}, "keep": {"type": "pvc", "mount_path": "/k"}},
            "networking": {"default": {"port": 80}, "extra": {"port": 81}},
        },
    ]
    out = merged({}, chain)
    assert out["volume_mounts"] == {"keep": {"type": "pvc", "mount_path": "/k"}}
    assert out["networking"] == {"default": {"port": 80}}


def test_networking_per_key_and_per_field() -> None:
    chain = [
        {"networking": {"default": {"tapis_auth": True, "port": 8888}}},
        {
            "networking": {
                "default": {"protocol": "http", "port": 8000},
                "bolt": {"protocol": "tcp", "port": 7687},
            }
        },
    ]
    out = merged(
        {"networking": {"default": {"port": 9000}, "extra": {"protocol": "tcp", "port": 7000}}}, chain
    )
    assert out["networking"] == {
        "default": {"protocol": "http", "port": 9000, "tapis_auth": True},
        "bolt": {"protocol": "tcp", "port": 7687},
        "extra": {"protocol": "tcp", "port": 7000},
    }


def test_networking_user_port_only_keeps_template_tapis_auth_with_full_stored_stanza() -> None:
    body = {"pod_id": "mypod", "template": "ollama", "networking": {"default": {"port": 9000}}}
    user_set = user_set_fields(body)
    stored = NewPod.model_validate(body).model_dump()  # the store keeps every stanza field, defaults included
    stored["networking"]["default"]["url"] = "mypod.pods.localhost"
    chain = [{"networking": {"default": {"protocol": "http", "port": 11434, "tapis_auth": True}}}]
    out = merge_pod(stored, user_set, chain, POD_DEFAULTS)
    assert out["networking"] == {"default": {"protocol": "http", "port": 9000, "tapis_auth": True}}


def test_networking_without_granular_entries_lays_whole_stored_stanza() -> None:
    chain = [{"networking": {"default": {"protocol": "http", "port": 11434, "tapis_auth": True}}}]
    pod = {"networking": {"default": {"port": 9000, "tapis_auth": False, "url": "x.pods.localhost"}}}
    out = merge_pod(pod, {"networking"}, chain, POD_DEFAULTS)
    assert out["networking"] == {"default": {"protocol": "http", "port": 9000, "tapis_auth": False}}


def test_networking_defaults_only_when_nobody_defines() -> None:
    out = merged({}, [{"networking": {"bolt": {"protocol": "tcp", "port": 7687}}}])
    assert out["networking"] == {"bolt": {"protocol": "tcp", "port": 7687}}
    assert merged({}, [{"networking": {}}])["networking"] == POD_DEFAULTS["networking"]
    assert merged({"networking": {}}, [])["networking"] == {}
    assert merged({"networking": {}}, [{"networking": {"web": {"port": 80}}}])["networking"] == {
        "web": {"port": 80}
    }


def test_template_field_is_pods_own_pinned_string() -> None:
    out = merged({"template": "mongo:8@2025-01-30-17:14:14"}, [{"template": "base:1", "image": "x:1"}])
    assert out["template"] == "mongo:8@2025-01-30-17:14:14"


def test_non_definition_fields_pass_through() -> None:
    pod = {"pod_id": "mypod", "status": "AVAILABLE", "status_requested": "ON", "creation_ts": "2025-01-01"}
    out = merged(pod, [{"image": "x:1"}])
    for key, value in pod.items():
        assert out[key] == value


def test_merge_does_not_mutate_or_alias_inputs() -> None:
    pod = {
        "environment_variables": {"A": "1"},
        "networking": {"default": {"port": 80, "ip_allow_list": ["10.0.0.0/8"]}},
        "resources": {"cpu_limit": 1000},
        "command": ["run"],
    }
    chain = [
        {"environment_variables": {"B": "2"}, "networking": {"default": {"tapis_auth_allowed_users": ["x"]}}},
        {"volume_mounts": {"v": {"type": "pvc"}}, "arguments": ["--a"], "resources": {"gpus": 1}},
    ]
    defaults = copy.deepcopy(POD_DEFAULTS)
    snapshot = copy.deepcopy((pod, chain, defaults))
    out = merged(pod, chain, defaults)
    out["environment_variables"]["Z"] = "z"
    out["networking"]["default"]["ip_allow_list"].append("1.2.3.4")
    out["networking"]["default"]["tapis_auth_allowed_users"].append("y")
    out["volume_mounts"]["v"]["type"] = "x"
    out["arguments"].append("--b")
    out["command"].append("x")
    out["resources"]["gpus"] = 9
    out2 = merged({}, [], defaults)
    out2["networking"]["default"]["port"] = 1
    assert (pod, chain, defaults) == snapshot


def test_merged_output_validates_as_pod() -> None:
    chain = [
        {
            "image": "mongo:8",
            "networking": {"default": {"port": 27017, "protocol": "tcp"}},
            "time_to_stop_default": -1,
            "environment_variables": {"MONGO_INITDB_ROOT_USERNAME": "<<tapissecret_user_username>>"},
            "resources": {"mem_limit": 4096},
        }
    ]
    pod = {"pod_id": "mypod", "template": "mongo:8@2025-01-30-17:14:14", "description": "mine"}
    out = merged(pod, chain)
    NewPod.model_validate(out)


# ---------------------------------------------------------------------------------- user guide


def test_user_guide_mongo_example() -> None:
    """The guide's mongo tag (with working placeholders) and create_pod(template='mongo:8@ts', ...)."""
    s = Store()
    definition = TemplateTagPodDefinition.model_validate(
        {
            "image": "mongo:8",
            "networking": {"default": {"port": 27017, "protocol": "tcp"}},
            "time_to_stop_default": -1,
            "environment_variables": {
                "MONGO_INITDB_ROOT_USERNAME": "<<tapissecret_user_username>>",
                "MONGO_INITDB_ROOT_PASSWORD": "<<tapissecret_user_password>>",
            },
        }
    ).as_definition()
    record = s.add("mongo", "8", definition, T0)
    body = {"pod_id": "mypod", "template": "mongo:8@2025-01-30-17:14:14", "time_to_stop_default": -1}
    chain = resolve_chain(parse_template_ref(body["template"]), s.lookup)
    assert chain == [record]
    pod = {**body, "template": pin(chain[0])}
    out = merge_pod(pod, user_set_fields(body), [r.pod_definition for r in chain], POD_DEFAULTS)
    assert out["image"] == "mongo:8"
    assert out["networking"] == {"default": {"port": 27017, "protocol": "tcp"}}
    assert out["time_to_stop_default"] == -1
    assert out["environment_variables"]["MONGO_INITDB_ROOT_PASSWORD"] == "<<tapissecret_user_password>>"
    assert out["template"] == "mongo:8@2025-01-30-17:14:14"
    NewPod.model_validate(out)


# ---------------------------------------------------------------------------------- definition_from_pod


def test_definition_from_pod_only_user_set_fields() -> None:
    body = {
        "pod_id": "mypod",
        "template": "mongo",
        "description": "my mongo",
        "resources": {"mem_limit": 4096},
        "networking": {"default": {"port": 27018}},
        "environment_variables": {"EXTRA": "1"},
        "command": None,
    }
    user_set = user_set_fields(body)
    stored = NewPod.model_validate(body).model_dump()
    stored.update(
        template="mongo:8@2025-01-30-17:14:14",
        status="AVAILABLE",
        status_container={"phase": "Running"},
        creation_ts="2025-01-30T17:14:14",
        image="stale:1",
    )
    stored["networking"]["default"]["url"] = "mypod.pods.localhost"
    definition = definition_from_pod(stored, user_set)
    assert definition == {
        "template": "mongo:8@2025-01-30-17:14:14",
        "description": "my mongo",
        "resources": {"mem_limit": 4096},
        "networking": {"default": {"port": 27018}},
        "environment_variables": {"EXTRA": "1"},
    }
    assert set(definition) <= set(DEFINITION_FIELDS)
    TemplateTagPodDefinition.model_validate(definition)
    definition["environment_variables"]["X"] = "y"
    assert "X" not in stored["environment_variables"]


def test_definition_from_pod_template_always_kept_and_empty_values_dropped() -> None:
    pod = {
        "template": "base:v1@2025-01-30-17:14:14",
        "image": "",
        "description": "",
        "resources": {"gpus": 0},
    }
    assert definition_from_pod(pod, {"image", "description", "resources"}) == {
        "template": "base:v1@2025-01-30-17:14:14",
        "description": "",
        "resources": {"gpus": 0},
    }
    assert definition_from_pod({"template": "", "pod_id": "x", "status": "ON"}, {"pod_id", "status"}) == {}


def test_saved_tag_reproduces_the_derived_pod() -> None:
    """A pod saved as a tag, then used by a new pod with no overrides, derives the same definition."""
    s = Store()
    s.add(
        "base",
        "latest",
        {"image": "img:1", "networking": {"default": {"port": 8000, "tapis_auth": True}}},
        T0,
    )
    body = {
        "pod_id": "first",
        "template": "base",
        "environment_variables": {"A": "1"},
        "resources": {"cpu_limit": 3000},
        "networking": {"default": {"port": 9000}},
    }
    chain = resolve_chain(parse_template_ref(body["template"]), s.lookup)
    user_set = user_set_fields(body)
    stored = NewPod.model_validate({**body, "template": pin(chain[0])}).model_dump()
    first = merge_pod(stored, user_set, [r.pod_definition for r in chain], POD_DEFAULTS)

    definition = definition_from_pod(stored, user_set)
    resolve_chain(parse_template_ref(definition["template"]), s.lookup, outer=["saved"])  # no loop
    saved = s.add("saved", "v1", TemplateTagPodDefinition.model_validate(definition).as_definition(), T0)

    body2 = {"pod_id": "second", "template": "saved:v1"}
    chain2 = resolve_chain(parse_template_ref(body2["template"]), s.lookup)
    assert chain2[0] is saved
    stored2 = NewPod.model_validate({**body2, "template": pin(chain2[0])}).model_dump()
    second = merge_pod(stored2, user_set_fields(body2), [r.pod_definition for r in chain2], POD_DEFAULTS)
    for field in DEFINITION_FIELDS:
        if field != "template":
            assert second[field] == first[field], field
    assert second["networking"]["default"] == {"port": 9000, "tapis_auth": True}
