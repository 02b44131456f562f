"""Templates and template tags through HTTP and the unmodified tapipy client, against a real server.

Covers issue 5's "Tests that must exist" apart from permissions (``test_templates_permissions.py``) and running
containers (``tests/integration/test_templated_pods.py``):

- the user guide's ``mongo`` template and tag example, and ``create_pod(template='name:tag@timestamp')``;
- list / get / update / delete of templates, list / get of tags (``full``, ``tag`` and ``tag@timestamp``);
- resolution of ``name``, ``name:tag`` and ``name:tag@ts`` (always pinned on the pod, newest version, never a
  tag of another template, distinct ``tag_timestamp`` for tags made in the same second);
- the merge seen through ``get_derived_pod`` (precedence, per-key merges, chains, loops, defaults, secrets);
- the image of a templated pod is checked against the caller's tenant allowlist;
- ``save_pod_as_template_tag``;
- the starter catalog (server import, ``openpods templates import``);
- bad input → 400/404 with a message that says what is wrong.

HTTP-only tests share one module server per database backend (``import_starter_catalog=False``); the catalog
tests have their own module server that imports it.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tapipy import errors as tapipy_errors

from openpods.catalog import load_catalog
from openpods.store.tables import Permission, Pod, Template, TemplateTag

IMAGE = "localhost/openpods-test/http"
IMAGE2 = "localhost/openpods-test/busybox"
TS_RE = r"\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2}(\.\d+)?"
NO_CHANGE = "Incoming data made no changes to template. Is incoming data equal to current data?"
# The user guide's tag example, verbatim (single-bracket placeholders are not substituted; behaviour §2.8).
GUIDE_MONGO_DEFINITION = {
    "image": "mongo:8",
    "networking": {"default": {"port": 27017, "protocol": "tcp"}},
    "time_to_stop_default": -1,
    "environment_variables": {
        "MONGO_INITDB_ROOT_USERNAME": "<TAPIS_user_username>",
        "MONGO_INITDB_ROOT_PASSWORD": "<TAPIS_user_password>",
    },
}
CATALOG = load_catalog()
CATALOG_TAGS = [(t.template_id, tag.tag, tag.pod_definition) for t in CATALOG for tag in t.tags]


# ------------------------------------------------------------------------------------------------ helpers


def result(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.request.method, str(r.request.url), r.status_code, r.text)
    body = r.json()
    assert body["status"] == "success", r.text
    return body["result"]


def message_text(r: httpx.Response) -> str:
    message = r.json()["message"]
    return message if isinstance(message, str) else " | ".join(message)


def assert_error(r: httpx.Response, status: int | tuple[int, ...], *fragments: str) -> str:
    """``r`` is an error envelope with one of the given statuses whose message contains every fragment
    (case-insensitive). Returns the message."""
    allowed = (status,) if isinstance(status, int) else status
    assert r.status_code in allowed, (r.request.method, str(r.request.url), r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "error", r.text
    text = message_text(r)
    for fragment in fragments:
        assert fragment.lower() in text.lower(), (fragment, text)
    return text


@dataclass
class Env:
    server: Any
    owner: httpx.Client  # "tplowner": creates most templates and pods
    other: httpx.Client  # "tplother": a second user of the same tenant
    admin: httpx.Client

    def add_template(self, template_id: str, client: httpx.Client | None = None, **fields: Any) -> dict:
        return result(
            (client or self.owner).post("/v3/pods/templates", json={"template_id": template_id, **fields})
        )

    def add_tag(
        self,
        template_id: str,
        definition: dict[str, Any],
        tag: str = "latest",
        client: httpx.Client | None = None,
        commit_message: str = "a commit",
    ) -> dict:
        r = (client or self.owner).post(
            f"/v3/pods/templates/{template_id}/tags",
            json={"pod_definition": definition, "tag": tag, "commit_message": commit_message},
        )
        return result(r)

    def create_pod(self, pod_id: str, client: httpx.Client | None = None, **fields: Any) -> httpx.Response:
        fields.setdefault("status_requested", "OFF")
        return (client or self.owner).post("/v3/pods", json={"pod_id": pod_id, **fields})

    def pod(self, pod_id: str, client: httpx.Client | None = None, **fields: Any) -> dict:
        return result(self.create_pod(pod_id, client, **fields))

    def derived(self, pod_id: str, client: httpx.Client | None = None) -> dict:
        return result((client or self.owner).get(f"/v3/pods/{pod_id}/derived"))


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    return make_module_server(import_starter_catalog=False)


@pytest.fixture(scope="module")
def env(srv: Any) -> Env:
    srv.allow_image(IMAGE)
    srv.allow_image(IMAGE2)
    srv.allow_image("mongo", tenants=["default"])
    srv.allow_image("localhost/openpods-test/otheronly", tenants=["other"])
    for name in ("tplowner", "tplother", "guideuser"):
        srv.add_user(name)
    return Env(
        server=srv, owner=srv.client("tplowner"), other=srv.client("tplother"), admin=srv.client("admin")
    )


def tapi_status(exc: tapipy_errors.BaseTapyException) -> int:
    return exc.response.status_code  # type: ignore[union-attr]


def strip_urls(networking: dict[str, Any]) -> dict[str, Any]:
    return {k: {f: v for f, v in stanza.items() if f != "url"} for k, stanza in networking.items()}


DEFINITION_FIELDS = (
    "image",
    "description",
    "command",
    "arguments",
    "environment_variables",
    "volume_mounts",
    "time_to_stop_default",
    "time_to_stop_instance",
    "resources",
    "compute_queue",
)


def definition_of(derived: dict[str, Any]) -> dict[str, Any]:
    """The runnable definition of a derived pod (no ids, statuses, timestamps or generated URLs)."""
    out = {k: derived.get(k) for k in DEFINITION_FIELDS}
    out["networking"] = strip_urls(derived["networking"])
    return out


# ------------------------------------------------------------------------------------------------ the guide


def test_guide_mongo_template_and_tag_with_tapipy(env: Env) -> None:
    t = env.server.tapis("guideuser")
    templates = t.pods.list_templates()
    assert "mongo" not in [x.template_id for x in templates]

    created = t.pods.add_template(
        template_id="mongo",
        description="TACC's MongoDB template",
        metatags=["mongo", "database", "TACC", "http"],
    )
    assert created.template_id == "mongo"
    assert created.description == "TACC's MongoDB template"
    assert created.metatags == ["mongo", "database", "TACC", "http"]
    assert created.archive_message == ""
    assert created.creation_ts and created.update_ts

    tag = t.pods.add_template_tag(
        template_id="mongo",
        pod_definition={
            "image": "mongo:8",
            "networking": {"default": {"port": 27017, "protocol": "tcp"}},
            "time_to_stop_default": -1,
            "environment_variables": {
                "MONGO_INITDB_ROOT_USERNAME": "<TAPIS_user_username>",
                "MONGO_INITDB_ROOT_PASSWORD": "<TAPIS_user_password>",
            },
        },
        tag="8",
        commit_message="mongo:8 template",
    )
    assert tag.template_id == "mongo"
    assert tag.tag == "8"
    assert tag.commit_message == "mongo:8 template"
    assert tag.added_by == "guideuser"
    assert re.fullmatch(rf"8@{TS_RE}", tag.tag_timestamp), tag.tag_timestamp
    assert tag.creation_ts
    # The stored definition is what the author sent: no defaults filled in that would override later.
    raw = result(env.server.client("guideuser").get("/v3/pods/templates/mongo/tags/8"))
    assert raw[0]["pod_definition"] == GUIDE_MONGO_DEFINITION

    assert "mongo" in [x.template_id for x in t.pods.list_templates()]
    got = t.pods.get_template(template_id="mongo")
    assert got.template_id == "mongo" and got.metatags == ["mongo", "database", "TACC", "http"]
    tags = t.pods.list_template_tags(template_id="mongo")
    assert [x.tag_timestamp for x in tags] == [tag.tag_timestamp]
    by_tag = t.pods.get_template_tag(template_id="mongo", tag_id="8")
    assert isinstance(by_tag, list) and [x.tag_timestamp for x in by_tag] == [tag.tag_timestamp]
    by_version = t.pods.get_template_tag(template_id="mongo", tag_id=tag.tag_timestamp)
    assert isinstance(by_version, list) and [x.tag_timestamp for x in by_version] == [tag.tag_timestamp]
    assert by_version[0].pod_definition.image == "mongo:8"

    # A pod from the guide's template, pinned as the guide writes it.
    pod = t.pods.create_pod(
        pod_id="guidemongo", template=f"mongo:{tag.tag_timestamp}", status_requested="OFF"
    )
    assert pod.template == f"mongo:{tag.tag_timestamp}"
    derived = t.pods.get_derived_pod(pod_id="guidemongo")
    assert derived.image == "mongo:8"
    assert derived.time_to_stop_default == -1
    assert derived.networking.default.protocol == "tcp" and derived.networking.default.port == 27017
    assert derived.environment_variables.MONGO_INITDB_ROOT_USERNAME == "<TAPIS_user_username>"


def test_guide_create_pod_from_tag_at_timestamp_with_tapipy(env: Env, new_id: Callable[[str], str]) -> None:
    """The guide's ``create_pod(pod_id=…, template='neo4j:5.26s3se@2025-01-30-17:14:14', time_to_stop_default=-1)``
    with a template of our own and the tag_timestamp the service gave."""
    template_id = new_id("graph")
    t = env.server.tapis("guideuser")
    t.pods.add_template(template_id=template_id, description="graph database")
    first = t.pods.add_template_tag(
        template_id=template_id,
        tag="5.26s3se",
        commit_message="first",
        pod_definition={"image": IMAGE, "environment_variables": {"V": "1"}, "time_to_stop_default": 3600},
    )
    t.pods.add_template_tag(
        template_id=template_id,
        tag="5.26s3se",
        commit_message="second",
        pod_definition={"image": IMAGE, "environment_variables": {"V": "2"}},
    )
    reference = f"{template_id}:{first.tag_timestamp}"
    assert re.fullmatch(rf"{template_id}:5\.26s3se@{TS_RE}", reference)

    pod_id = new_id("mypod")
    pod = t.pods.create_pod(pod_id=pod_id, template=reference, time_to_stop_default=-1)
    assert pod.pod_id == pod_id
    assert pod.template == reference  # the pinned, older version, not the newest
    derived = t.pods.get_derived_pod(pod_id=pod_id)
    assert derived.template == reference
    assert derived.image == IMAGE
    assert derived.environment_variables.V == "1"
    assert derived.time_to_stop_default == -1  # user-set beats the template's 3600


def test_list_templates_and_tags_full_true_and_false(env: Env, new_id: Callable[[str], str]) -> None:
    a, b = new_id("lta"), new_id("ltb")
    env.add_template(a, description="A", metatags=["x"])
    env.add_template(b)
    ta1 = env.add_tag(a, {"image": IMAGE, "description": "a1"})
    ta2 = env.add_tag(a, {"image": IMAGE, "description": "a2"}, tag="v2")

    for full in (True, None):  # default is full=true (spec)
        r = env.owner.get("/v3/pods/templates/tags", params={} if full is None else {"full": "true"})
        listing = result(r)
        assert isinstance(listing, dict)
        assert listing[a]["template_id"] == a and listing[a]["description"] == "A"
        assert listing[a]["metatags"] == ["x"]
        assert {x["tag_timestamp"] for x in listing[a]["tags"]} == {
            ta1["tag_timestamp"],
            ta2["tag_timestamp"],
        }
        by_ts = {x["tag_timestamp"]: x for x in listing[a]["tags"]}
        assert by_ts[ta1["tag_timestamp"]]["pod_definition"] == {"image": IMAGE, "description": "a1"}
        assert listing[b]["tags"] == []

    listing = result(env.owner.get("/v3/pods/templates/tags", params={"full": "false"}))
    assert {x["tag_timestamp"] for x in listing[a]["tags"]} == {ta1["tag_timestamp"], ta2["tag_timestamp"]}
    for x in listing[a]["tags"]:
        assert "pod_definition" not in x
        assert {"tag", "tag_timestamp", "commit_message", "added_by", "creation_ts"} <= set(x)

    # tapipy, both ways.
    t = env.server.tapis("tplowner")
    full = t.pods.list_templates_and_tags(full=True)
    assert getattr(full, a).tags[0].pod_definition.image == IMAGE
    short = t.pods.list_templates_and_tags(full=False)
    assert not hasattr(getattr(short, a).tags[0], "pod_definition")
    # A user with no permission sees neither template.
    other = result(env.other.get("/v3/pods/templates/tags"))
    assert a not in other and b not in other


def test_list_template_tags_full_flag_and_get_tag(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("ltt")
    env.add_template(template_id)
    v1 = env.add_tag(template_id, {"image": IMAGE, "description": "v1"}, tag="stable")
    v2 = env.add_tag(template_id, {"image": IMAGE, "description": "v2"}, tag="stable")
    other = env.add_tag(template_id, {"image": IMAGE2}, tag="edge")

    tags = result(env.owner.get(f"/v3/pods/templates/{template_id}/tags"))
    assert {x["tag_timestamp"] for x in tags} == {
        v1["tag_timestamp"],
        v2["tag_timestamp"],
        other["tag_timestamp"],
    }
    assert all("pod_definition" in x for x in tags)
    tags = result(env.owner.get(f"/v3/pods/templates/{template_id}/tags", params={"full": "false"}))
    assert len(tags) == 3 and all("pod_definition" not in x for x in tags)

    # By tag: every version of that tag (a list), nothing of other tags.
    stable = result(env.owner.get(f"/v3/pods/templates/{template_id}/tags/stable"))
    assert {x["tag_timestamp"] for x in stable} == {v1["tag_timestamp"], v2["tag_timestamp"]}
    # By tag@timestamp: exactly that version, still a list.
    exact = result(env.owner.get(f"/v3/pods/templates/{template_id}/tags/{v1['tag_timestamp']}"))
    assert isinstance(exact, list) and len(exact) == 1
    assert exact[0]["tag_timestamp"] == v1["tag_timestamp"]
    assert exact[0]["pod_definition"] == {"image": IMAGE, "description": "v1"}
    assert exact[0]["added_by"] == "tplowner" and exact[0]["commit_message"] == "a commit"


def test_update_template_and_no_change_answer(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("upd")
    created = env.add_template(template_id, description="before", metatags=["a"])
    t = env.server.tapis("tplowner")
    updated = t.pods.update_template(
        template_id=template_id, description="after", metatags=["a", "b"], archive_message="use v2 instead"
    )
    assert updated.description == "after"
    assert updated.metatags == ["a", "b"]
    assert updated.archive_message == "use v2 instead"
    got = result(env.owner.get(f"/v3/pods/templates/{template_id}"))
    assert got["description"] == "after" and got["archive_message"] == "use v2 instead"
    assert got["creation_ts"] == created["creation_ts"]
    assert got["update_ts"] >= created["update_ts"]

    # Only the fields sent change.
    result(env.owner.put(f"/v3/pods/templates/{template_id}", json={"archive_message": ""}))
    got = result(env.owner.get(f"/v3/pods/templates/{template_id}"))
    assert got["description"] == "after" and got["metatags"] == ["a", "b"] and got["archive_message"] == ""

    before = env.server.rows(Template, tenant_id="default", template_id=template_id)
    r = env.owner.put(f"/v3/pods/templates/{template_id}", json={"description": "after"})
    assert r.status_code == 200, r.text
    assert r.json()["message"] == NO_CHANGE
    assert r.json()["result"]["description"] == "after"
    assert env.server.rows(Template, tenant_id="default", template_id=template_id) == before

    # template_id cannot be changed by an update.
    assert_error(
        env.owner.put(f"/v3/pods/templates/{template_id}", json={"template_id": "renamed"}),
        400,
        "template_id",
    )


def test_delete_template_refused_while_a_pod_uses_it(env: Env, new_id: Callable[[str], str]) -> None:
    template_id, pod_id = new_id("del"), new_id("pod")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": IMAGE})
    env.add_tag(template_id, {"image": IMAGE}, tag="v2")
    env.pod(pod_id, template=f"{template_id}:v2")
    t = env.server.tapis("tplowner")
    with pytest.raises(tapipy_errors.BaseTapyException) as exc:
        t.pods.delete_template(template_id=template_id)
    assert tapi_status(exc.value) == 409
    r = env.owner.delete(f"/v3/pods/templates/{template_id}")
    assert_error(r, 409, pod_id)
    assert len(env.server.rows(TemplateTag, tenant_id="default", template_id=template_id)) == 2
    result(env.owner.get(f"/v3/pods/{pod_id}/derived"))

    result(env.owner.delete(f"/v3/pods/{pod_id}"))
    deleted = t.pods.delete_template(template_id=template_id)
    # tapipy hands back the whole envelope when ``result`` is empty.
    assert deleted == "" or (deleted["result"] == "" and deleted["status"] == "success"), deleted
    assert_error(env.owner.get(f"/v3/pods/templates/{template_id}"), 404, template_id)
    assert env.server.rows(Template, tenant_id="default", template_id=template_id) == []
    assert env.server.rows(TemplateTag, tenant_id="default", template_id=template_id) == []
    assert (
        env.server.rows(Permission, object_type="template", tenant_id="default", object_id=template_id) == []
    )
    # The id can be used again, from scratch.
    env.add_template(template_id)
    assert result(env.owner.get(f"/v3/pods/templates/{template_id}/tags")) == []


def test_delete_template_refused_while_another_template_chains_to_it(
    env: Env, new_id: Callable[[str], str]
) -> None:
    base, child = new_id("base"), new_id("child")
    env.add_template(base)
    env.add_template(child)
    env.add_tag(base, {"image": IMAGE})
    env.add_tag(child, {"template": f"{base}:latest", "description": "child"})
    assert_error(env.owner.delete(f"/v3/pods/templates/{base}"), 409, child)
    assert len(env.server.rows(TemplateTag, tenant_id="default", template_id=base)) == 1
    result(env.owner.delete(f"/v3/pods/templates/{child}"))
    result(env.owner.delete(f"/v3/pods/templates/{base}"))


def test_delete_template_is_not_blocked_by_a_template_with_a_similar_name(
    env: Env, new_id: Callable[[str], str]
) -> None:
    short = new_id("sim")
    longer = short + "x"
    env.add_template(short)
    env.add_template(longer)
    env.add_tag(short, {"image": IMAGE})
    env.add_tag(longer, {"image": IMAGE})
    env.pod(new_id("pod"), template=longer)
    result(env.owner.delete(f"/v3/pods/templates/{short}"))


# ------------------------------------------------------------------------------------------------ resolution


def test_three_reference_forms_resolve_and_are_pinned(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("forms")
    env.add_template(template_id)
    latest1 = env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"V": "latest1"}})
    stable = env.add_tag(
        template_id, {"image": IMAGE, "environment_variables": {"V": "stable"}}, tag="stable"
    )
    latest2 = env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"V": "latest2"}})

    cases = {
        template_id: (latest2, "latest2"),  # name → newest version of "latest"
        f"{template_id}:stable": (stable, "stable"),  # name:tag → newest version of that tag
        f"{template_id}:latest": (latest2, "latest2"),
        f"{template_id}:{latest1['tag_timestamp']}": (latest1, "latest1"),  # exactly that version
    }
    for reference, (tag, value) in cases.items():
        pod_id = new_id("pod")
        pod = env.pod(pod_id, template=reference)
        assert pod["template"] == f"{template_id}:{tag['tag_timestamp']}", reference
        assert result(env.owner.get(f"/v3/pods/{pod_id}"))["template"] == pod["template"]
        derived = env.derived(pod_id)
        assert derived["template"] == pod["template"]
        assert derived["environment_variables"] == {"V": value}, reference

    # A pinned pod keeps its version when newer ones arrive.
    pod_id = new_id("pod")
    env.pod(pod_id, template=template_id)
    env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"V": "latest3"}})
    assert env.derived(pod_id)["environment_variables"] == {"V": "latest2"}


def test_template_without_latest_tag_needs_an_explicit_tag(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("nolatest")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": IMAGE}, tag="v1")
    assert_error(env.create_pod(new_id("pod"), template=template_id), 404, template_id, "latest")
    env.pod(new_id("pod"), template=f"{template_id}:v1")


def test_tag_of_same_name_in_another_template_is_never_used(env: Env, new_id: Callable[[str], str]) -> None:
    mine, theirs = new_id("mine"), new_id("theirs")
    env.add_template(mine)
    env.add_template(theirs)
    mine_shared = env.add_tag(mine, {"image": IMAGE, "environment_variables": {"FROM": "mine"}}, tag="shared")
    theirs_only = env.add_tag(
        theirs, {"image": IMAGE2, "environment_variables": {"FROM": "theirs"}}, tag="theirsonly"
    )
    # Newer versions of the same tag name in the other template must not win.
    theirs_shared = env.add_tag(
        theirs, {"image": IMAGE2, "environment_variables": {"FROM": "theirs"}}, tag="shared"
    )
    env.add_tag(theirs, {"image": IMAGE2, "environment_variables": {"FROM": "theirs"}})  # theirs:latest

    pod_id = new_id("pod")
    pod = env.pod(pod_id, template=f"{mine}:shared")
    assert pod["template"] == f"{mine}:{mine_shared['tag_timestamp']}"
    derived = env.derived(pod_id)
    assert derived["environment_variables"] == {"FROM": "mine"} and derived["image"] == IMAGE

    # mine has no "latest" and no "theirsonly": the other template's tags never fill in.
    assert_error(env.create_pod(new_id("pod"), template=mine), 404, mine)
    assert_error(env.create_pod(new_id("pod"), template=f"{mine}:theirsonly"), 404, "theirsonly")
    assert_error(env.create_pod(new_id("pod"), template=f"{mine}:{theirs_only['tag_timestamp']}"), 404)
    if theirs_shared["tag_timestamp"] != mine_shared["tag_timestamp"]:
        assert_error(env.create_pod(new_id("pod"), template=f"{mine}:{theirs_shared['tag_timestamp']}"), 404)
    # The tag endpoint is scoped the same way.
    assert_error(env.owner.get(f"/v3/pods/templates/{mine}/tags/theirsonly"), 404)
    got = result(env.owner.get(f"/v3/pods/templates/{mine}/tags/shared"))
    assert [x["template_id"] for x in got] == [mine]


def _base_second(tag_timestamp: str) -> str:
    return tag_timestamp.split("@", 1)[1].split(".", 1)[0]


def test_tags_made_in_the_same_second_get_distinct_timestamps_and_the_newer_wins(
    env: Env, new_id: Callable[[str], str]
) -> None:
    for _attempt in range(10):
        template_id = new_id("burst")
        env.add_template(template_id)
        made = [
            env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"N": str(i)}})
            for i in range(3)
        ]
        if len({_base_second(m["tag_timestamp"]) for m in made}) == 1:
            break
    else:
        pytest.fail("could not create three tags within one second in 10 attempts")
    stamps = [m["tag_timestamp"] for m in made]
    assert len(set(stamps)) == 3, stamps
    assert stamps[0] == f"latest@{_base_second(stamps[0])}"  # the first one has no suffix (Tapis form)
    for stamp in stamps:
        assert re.fullmatch(rf"latest@{TS_RE}", stamp), stamp

    pod_id = new_id("pod")
    assert env.pod(pod_id, template=template_id)["template"] == f"{template_id}:{stamps[2]}"
    assert env.derived(pod_id)["environment_variables"] == {"N": "2"}
    for i, stamp in enumerate(stamps):
        pod_id = new_id("pod")
        assert env.pod(pod_id, template=f"{template_id}:{stamp}")["template"] == f"{template_id}:{stamp}"
        assert env.derived(pod_id)["environment_variables"] == {"N": str(i)}
        got = result(env.owner.get(f"/v3/pods/templates/{template_id}/tags/{stamp}"))
        assert [x["tag_timestamp"] for x in got] == [stamp]


RACERS = 8
RACE_ROUNDS = 3


def race(env: Env, request: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """``RACERS`` requests released at the same moment (a barrier), each on its own connection."""
    clients = [env.server.client("tplowner") for _ in range(RACERS)]
    for c in clients:  # open the connections first, so the requests start together
        c.get("/v3/pods/templates/tags", params={"full": "false"})
    barrier = threading.Barrier(RACERS)

    def run(i: int) -> httpx.Response:
        barrier.wait()
        return request(clients[i], i)

    with concurrent.futures.ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(run, range(RACERS)))


def test_concurrent_tag_creation_gives_distinct_timestamps(env: Env, new_id: Callable[[str], str]) -> None:
    """Clients adding versions of the same tag at the same moment all succeed (no 500 from a clash of the
    tag_timestamp primary key) and get distinct tag_timestamps."""
    for _round in range(RACE_ROUNDS):
        template_id = new_id("race")
        env.add_template(template_id)

        def add(c: httpx.Client, i: int, template_id: str = template_id) -> httpx.Response:
            return c.post(
                f"/v3/pods/templates/{template_id}/tags",
                json={
                    "pod_definition": {"image": IMAGE, "environment_variables": {"N": str(i)}},
                    "commit_message": f"racer {i}",
                },
            )

        responses = race(env, add)
        assert [r.status_code for r in responses] == [200] * RACERS, [r.text for r in responses]
        stamps = [r.json()["result"]["tag_timestamp"] for r in responses]
        assert len(set(stamps)) == RACERS, stamps
        assert len(env.server.rows(TemplateTag, tenant_id="default", template_id=template_id)) == RACERS


def test_concurrent_add_template_with_one_id_gives_one_template_and_409s(
    env: Env, new_id: Callable[[str], str]
) -> None:
    for _round in range(RACE_ROUNDS):
        template_id = new_id("dup")
        responses = race(
            env, lambda c, _i, t=template_id: c.post("/v3/pods/templates", json={"template_id": t})
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] + [409] * (RACERS - 1), [r.text for r in responses]
        assert len(env.server.rows(Template, tenant_id="default", template_id=template_id)) == 1


# ------------------------------------------------------------------------------------------------ merge


def test_merge_precedence_user_over_nearest_over_deeper_over_defaults(
    env: Env, new_id: Callable[[str], str]
) -> None:
    deep, near = new_id("deep"), new_id("near")
    env.add_template(deep)
    env.add_template(near)
    env.add_tag(
        deep,
        {
            "image": IMAGE,
            "description": "deep",
            "command": ["sh", "-c"],
            "arguments": ["deep"],
            "environment_variables": {"A": "deep", "B": "deep", "C": "deep"},
            "time_to_stop_default": 7200,
            "resources": {"cpu_request": 300, "cpu_limit": 1500, "mem_limit": 1024},
            "networking": {
                "default": {"protocol": "http", "port": 6000},
                "extra": {"protocol": "tcp", "port": 7000},
            },
        },
    )
    env.add_tag(
        near,
        {
            "template": deep,
            "description": "near",
            "arguments": ["near"],
            "environment_variables": {"B": "near"},
            "resources": {"mem_limit": 2048},
            "networking": {"extra": {"port": 7001}},
        },
    )
    pod_id = new_id("pod")
    env.pod(
        pod_id,
        template=near,
        description="mine",
        environment_variables={"C": "mine"},
        resources={"cpu_request": 400},
    )
    d = env.derived(pod_id)
    assert d["pod_id"] == pod_id
    assert d["image"] == IMAGE  # only the deeper template sets it
    assert d["description"] == "mine"  # user > near > deep
    assert d["command"] == ["sh", "-c"]  # deep
    assert d["arguments"] == ["near"]  # near > deep
    assert d["environment_variables"] == {"A": "deep", "B": "near", "C": "mine"}
    assert d["time_to_stop_default"] == 7200  # deep > site default
    assert d.get("time_to_stop_instance") is None  # unset: absent, never null (spec type integer)
    assert d["compute_queue"] == "default"
    settings = env.server.settings
    assert d["resources"] == {
        "cpu_request": 400,
        "cpu_limit": 1500,
        "mem_request": settings.mem_request_default,
        "mem_limit": 2048,
        "gpus": 0,
    }
    nets = strip_urls(d["networking"])
    assert set(nets) == {"default", "extra"}  # no default http:5000 stanza added by the pod model
    assert (nets["default"]["protocol"], nets["default"]["port"]) == ("http", 6000)
    assert (nets["extra"]["protocol"], nets["extra"]["port"]) == ("tcp", 7001)
    # URLs are recomputed for the pod.
    assert d["networking"]["default"]["url"].startswith(f"{pod_id}.")
    assert d["networking"]["extra"]["url"].startswith(f"{pod_id}-extra.")

    # The pod's own view still shows only what the user set; the derived view is the merged one.
    own = result(env.owner.get(f"/v3/pods/{pod_id}"))
    assert own["description"] == "mine" and own["template"].startswith(f"{near}:latest@")


def test_networking_template_sets_tapis_auth_user_overrides_only_the_port(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id = new_id("auth")
    env.add_template(template_id)
    env.add_tag(
        template_id,
        {
            "image": IMAGE,
            "networking": {
                "default": {
                    "protocol": "http",
                    "port": 5000,
                    "tapis_auth": True,
                    "tapis_auth_allowed_users": ["tplowner"],
                    "tapis_ui_uri": "/lab",
                }
            },
        },
    )
    pod_id = new_id("pod")
    env.pod(pod_id, template=template_id, networking={"default": {"port": 8888}})
    stanza = env.derived(pod_id)["networking"]["default"]
    assert stanza["port"] == 8888
    assert stanza["tapis_auth"] is True
    assert stanza["tapis_auth_allowed_users"] == ["tplowner"]
    assert stanza["tapis_ui_uri"] == "/lab"
    assert stanza["protocol"] == "http"

    # An update of the port only keeps the template's tapis_auth, too.
    result(env.owner.put(f"/v3/pods/{pod_id}", json={"networking": {"default": {"port": 9999}}}))
    stanza = env.derived(pod_id)["networking"]["default"]
    assert stanza["port"] == 9999 and stanza["tapis_auth"] is True

    # A user stanza of another key is added next to the template's.
    pod_id = new_id("pod")
    env.pod(pod_id, template=template_id, networking={"api": {"protocol": "http", "port": 8000}})
    nets = env.derived(pod_id)["networking"]
    assert set(nets) == {"default", "api"}
    assert nets["default"]["tapis_auth"] is True and nets["api"]["port"] == 8000


def test_volume_mounts_merge_per_key(env: Env, new_id: Callable[[str], str]) -> None:
    vol_a, vol_b, vol_c = new_id("vola"), new_id("volb"), new_id("volc")
    for vol in (vol_a, vol_b, vol_c):
        result(env.owner.post("/v3/pods/volumes", json={"volume_id": vol}))
    template_id = new_id("mounts")
    env.add_template(template_id)
    env.add_tag(
        template_id,
        {
            "image": IMAGE,
            "volume_mounts": {
                vol_a: {"type": "tapisvolume", "mount_path": "/a"},
                vol_b: {"type": "tapisvolume", "mount_path": "/b", "sub_path": "sub"},
            },
        },
    )
    pod_id = new_id("pod")
    env.pod(
        pod_id,
        template=template_id,
        volume_mounts={
            vol_b: {"type": "tapisvolume", "mount_path": "/mine"},
            vol_c: {"type": "tapisvolume", "mount_path": "/c"},
        },
    )
    mounts = env.derived(pod_id)["volume_mounts"]
    assert set(mounts) == {vol_a, vol_b, vol_c}
    assert (mounts[vol_a]["mount_path"], mounts[vol_a]["sub_path"]) == ("/a", "")
    # A mount is replaced as a whole: the user's mount of vol_b has no sub_path.
    assert (mounts[vol_b]["mount_path"], mounts[vol_b]["sub_path"]) == ("/mine", "")
    assert mounts[vol_c]["mount_path"] == "/c"


def test_minimal_template_gets_the_site_defaults(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("minimal")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": IMAGE})
    pod_id = new_id("pod")
    env.pod(pod_id, template=template_id)
    d = env.derived(pod_id)
    s = env.server.settings
    assert d["image"] == IMAGE
    assert d["description"] == ""
    assert d["command"] == [] and d["arguments"] == []  # unset: empty lists, never null
    assert d["environment_variables"] == {} and d["volume_mounts"] == {}
    assert d["time_to_stop_default"] == s.default_time_to_stop_sec
    assert d["compute_queue"] == "default"
    assert d["resources"] == {
        "cpu_request": s.cpu_request_default,
        "cpu_limit": s.cpu_limit_default,
        "mem_request": s.mem_request_default,
        "mem_limit": s.mem_limit_default,
        "gpus": 0,
    }
    nets = strip_urls(d["networking"])
    assert list(nets) == ["default"]
    assert (nets["default"]["protocol"], nets["default"]["port"]) == ("http", 5000)


def test_chain_of_four_levels_takes_the_image_from_the_deepest(
    env: Env, new_id: Callable[[str], str]
) -> None:
    """Tapis derives images through at most 2 template levels; OpenPods follows the whole chain."""
    ids = [new_id(f"lvl{i}") for i in range(4)]  # ids[0] is the deepest
    for i, template_id in enumerate(ids):
        env.add_template(template_id)
        definition: dict[str, Any] = {"environment_variables": {f"L{i}": str(i), "WHO": str(i)}}
        if i == 0:
            definition["image"] = IMAGE
        else:
            definition["template"] = ids[i - 1]
        env.add_tag(template_id, definition)
    pod_id = new_id("pod")
    env.pod(pod_id, template=ids[-1])
    d = env.derived(pod_id)
    assert d["image"] == IMAGE
    assert d["environment_variables"] == {"L0": "0", "L1": "1", "L2": "2", "L3": "3", "WHO": "3"}


def test_chain_follows_unpinned_parent_to_its_newest_version(env: Env, new_id: Callable[[str], str]) -> None:
    parent, child, pinned_child = new_id("parent"), new_id("child"), new_id("pinned")
    for t in (parent, child, pinned_child):
        env.add_template(t)
    first = env.add_tag(parent, {"image": IMAGE, "environment_variables": {"P": "1"}})
    env.add_tag(child, {"template": parent})
    env.add_tag(pinned_child, {"template": f"{parent}:{first['tag_timestamp']}"})
    env.add_tag(parent, {"image": IMAGE, "environment_variables": {"P": "2"}})
    pod_a, pod_b = new_id("pod"), new_id("pod")
    env.pod(pod_a, template=child)
    env.pod(pod_b, template=pinned_child)
    assert env.derived(pod_a)["environment_variables"] == {"P": "2"}
    assert env.derived(pod_b)["environment_variables"] == {"P": "1"}


@pytest.mark.parametrize("length", [1, 2, 3])
def test_loops_are_refused_at_tag_creation(env: Env, new_id: Callable[[str], str], length: int) -> None:
    ids = [new_id("loop") for _ in range(length)]
    for t in ids:
        env.add_template(t)
    env.add_tag(ids[0], {"image": IMAGE})
    for i in range(1, length):
        env.add_tag(ids[i], {"template": ids[i - 1]})  # ids[i] -> ids[i-1] -> ... -> ids[0]
    before = env.server.rows(TemplateTag, tenant_id="default")
    # Closing the loop: ids[0] -> ids[-1] (length 1: ids[0] -> itself).
    r = env.owner.post(
        f"/v3/pods/templates/{ids[0]}/tags",
        json={"pod_definition": {"template": ids[-1]}, "commit_message": "close the loop"},
    )
    assert_error(r, 400, "loop", ids[0])
    assert env.server.rows(TemplateTag, tenant_id="default") == before
    # Loops are keyed on name:tag@timestamp (as the original service does): another tag of ids[0] may chain
    # through the others back to ids[0]:latest, which is an existing version, not the one being added.
    r = env.owner.post(
        f"/v3/pods/templates/{ids[0]}/tags",
        json={
            "pod_definition": {"template": f"{ids[-1]}:latest"},
            "tag": "other",
            "commit_message": "no loop: reaches ids[0]:latest, not ids[0]:other",
        },
    )
    assert r.status_code == 200, r.text
    # ... but a new version of ids[0]:other that leads back to ids[0]:other unpinned is a loop.
    r = env.owner.post(
        f"/v3/pods/templates/{ids[0]}/tags",
        json={"pod_definition": {"template": f"{ids[0]}:other"}, "tag": "other", "commit_message": "loop"},
    )
    assert_error(r, 400, "loop")


def test_chain_deeper_than_the_limit_is_refused(env: Env, new_id: Callable[[str], str]) -> None:
    ids = [new_id("deep") for _ in range(12)]
    for t in ids:
        env.add_template(t)
    env.add_tag(ids[0], {"image": IMAGE})
    refused = None
    for i in range(1, len(ids)):
        r = env.owner.post(
            f"/v3/pods/templates/{ids[i]}/tags",
            json={"pod_definition": {"template": ids[i - 1]}, "commit_message": "deeper"},
        )
        if r.status_code != 200:
            refused = i
            assert_error(r, 400, "deep")
            break
    assert refused is not None, "a chain of 12 levels was accepted"
    # The deepest accepted chain still resolves.
    pod_id = new_id("pod")
    env.pod(pod_id, template=ids[refused - 1])
    assert env.derived(pod_id)["image"] == IMAGE


def test_derived_never_substitutes_secrets(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("secret")
    env.add_template(template_id)
    env_vars = {
        "DB_USER": "<<tapissecret_user_username>>",
        "DB_PASS": "<<tapissecret_user_password>>",
        "SVC": "<<tapissecret_service_password>>",
        "LEGACY": "<<TAPIS_user_password>>",
    }
    env.add_tag(template_id, {"image": IMAGE, "environment_variables": env_vars})
    pod_id = new_id("pod")
    env.pod(pod_id, template=template_id, environment_variables={"MINE": "x<<tapissecret_user_password>>"})
    r = env.owner.get(f"/v3/pods/{pod_id}/derived")
    d = result(r)
    assert d["environment_variables"] == {**env_vars, "MINE": "x<<tapissecret_user_password>>"}
    creds = result(env.owner.get(f"/v3/pods/{pod_id}/credentials"))
    for key, value in creds.items():
        if "password" in key and value:
            assert value not in r.text, key


# ------------------------------------------------------------------------------------------------ images


def test_image_of_a_templated_pod_must_be_allowed_for_the_tenant(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id = new_id("img")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": "localhost/not-allowed/thing:1"}, tag="unlisted")
    env.add_tag(template_id, {"image": "localhost/openpods-test/otheronly:1"}, tag="othertenant")
    env.add_tag(template_id, {"description": "no image at all"}, tag="noimage")
    env.add_tag(template_id, {"image": IMAGE}, tag="ok")
    before = env.server.rows(Pod, tenant_id="default")
    assert_error(
        env.create_pod(new_id("pod"), template=f"{template_id}:unlisted"),
        400,
        "localhost/not-allowed/thing:1",
        "allow",
    )
    assert_error(
        env.create_pod(new_id("pod"), template=f"{template_id}:othertenant"),
        400,
        "localhost/openpods-test/otheronly:1",
    )
    assert_error(env.create_pod(new_id("pod"), template=f"{template_id}:noimage"), 400, "image")
    # The user's own image replaces the template's and is checked the same way.
    assert_error(
        env.create_pod(new_id("pod"), template=f"{template_id}:ok", image="localhost/not-allowed/x"),
        400,
        "localhost/not-allowed/x",
    )
    assert env.server.rows(Pod, tenant_id="default") == before
    pod_id = new_id("pod")
    env.pod(pod_id, template=f"{template_id}:unlisted", image=IMAGE)
    assert env.derived(pod_id)["image"] == IMAGE


def test_restart_grab_latest_refuses_a_newer_tag_with_a_disallowed_image(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id, pod_id = new_id("imgnew"), new_id("pod")
    env.add_template(template_id)
    first = env.add_tag(template_id, {"image": IMAGE})
    pinned = f"{template_id}:{first['tag_timestamp']}"
    env.pod(pod_id, template=template_id)
    env.add_tag(template_id, {"image": "localhost/not-allowed/newer"})
    r = env.owner.get(f"/v3/pods/{pod_id}/restart", params={"grab_latest_template_tag": "true"})
    assert_error(r, 400, "localhost/not-allowed/newer")
    pod = result(env.owner.get(f"/v3/pods/{pod_id}"))
    assert pod["template"] == pinned and pod["status"] == "STOPPED"


def test_restart_grab_latest_moves_the_pin_without_containers(env: Env, new_id: Callable[[str], str]) -> None:
    template_id, pod_id = new_id("grab"), new_id("pod")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"V": "1"}}, tag="v")
    env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"V": "other"}}, tag="w")
    first_pin = env.pod(pod_id, template=f"{template_id}:v")["template"]
    # Without the flag nothing moves.
    newer = env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"V": "2"}}, tag="v")
    result(env.owner.get(f"/v3/pods/{pod_id}/restart"))
    assert result(env.owner.get(f"/v3/pods/{pod_id}"))["template"] == first_pin
    result(env.owner.get(f"/v3/pods/{pod_id}/stop"))
    pod = result(env.owner.get(f"/v3/pods/{pod_id}/restart", params={"grab_latest_template_tag": "true"}))
    assert pod["template"] == f"{template_id}:{newer['tag_timestamp']}"  # same tag, never "w"
    assert env.derived(pod_id)["environment_variables"] == {"V": "2"}


@pytest.mark.parametrize(
    ("definition", "user_fields", "field"),
    [
        ({"image": IMAGE, "resources": {"cpu_limit": 100000}}, {}, "cpu_limit"),
        ({"image": IMAGE, "resources": {"mem_limit": 10**7}}, {}, "mem_limit"),
        ({"image": IMAGE, "resources": {"gpus": 8}}, {}, "gpus"),
        ({"image": IMAGE, "compute_queue": "nosuchqueue"}, {}, "compute_queue"),
        ({"image": IMAGE, "time_to_stop_default": 1}, {}, "time_to_stop_default"),
        # Each level is fine on its own; the merge is not (request above limit).
        (
            {"image": IMAGE, "resources": {"cpu_request": 3000}},
            {"resources": {"cpu_limit": 1000}},
            "cpu_request",
        ),
    ],
    ids=["cpu_limit", "mem_limit", "gpus", "compute_queue", "time_to_stop", "merged_request_over_limit"],
)
def test_site_limits_apply_to_the_merged_definition(
    env: Env,
    new_id: Callable[[str], str],
    definition: dict[str, Any],
    user_fields: dict[str, Any],
    field: str,
) -> None:
    """A template must not be a way around the site's limits: the tag is refused, or a pod using it is."""
    template_id = new_id("limits")
    env.add_template(template_id)
    r = env.owner.post(
        f"/v3/pods/templates/{template_id}/tags",
        json={"pod_definition": definition, "commit_message": "over the limits"},
    )
    if r.status_code != 200:
        assert_error(r, 400, field)
        return
    pod_id = new_id("pod")
    r = env.create_pod(pod_id, template=template_id, **user_fields)
    if r.status_code == 200:
        derived = env.derived(pod_id)
        pytest.fail(
            f"a pod got past the site limits through its template ({field}): "
            f"resources={derived['resources']}, compute_queue={derived['compute_queue']!r}, "
            f"time_to_stop_default={derived['time_to_stop_default']}"
        )
    assert_error(r, 400, field)


# ------------------------------------------------------------------------------------------------ save as tag


def test_save_pod_as_template_tag_saves_the_user_set_fields(env: Env, new_id: Callable[[str], str]) -> None:
    base, target, pod_id = new_id("base"), new_id("target"), new_id("pod")
    env.add_template(base)
    env.add_template(target)
    env.add_tag(
        base,
        {
            "image": IMAGE,
            "description": "base",
            "environment_variables": {"A": "base", "B": "base"},
            "resources": {"cpu_limit": 1500, "mem_limit": 1024},
            "networking": {"default": {"protocol": "http", "port": 5000, "tapis_auth": True}},
        },
    )
    pod = env.pod(
        pod_id,
        template=base,
        environment_variables={"B": "mine", "C": "mine"},
        resources={"mem_limit": 2048},
        networking={"default": {"port": 8080}},
        time_to_stop_default=-1,
    )
    tag = result(
        env.owner.post(
            f"/v3/pods/{pod_id}/save_pod_as_template_tag",
            json={"template_id": target, "tag": "snapshot1", "commit_message": "saved from my pod"},
        )
    )
    assert tag["template_id"] == target and tag["tag"] == "snapshot1"
    assert tag["added_by"] == "tplowner" and tag["commit_message"] == "saved from my pod"
    assert re.fullmatch(rf"snapshot1@{TS_RE}", tag["tag_timestamp"])
    assert tag["pod_definition"] == {
        "template": pod["template"],
        "environment_variables": {"B": "mine", "C": "mine"},
        "resources": {"mem_limit": 2048},
        "networking": {"default": {"port": 8080}},
        "time_to_stop_default": -1,
    }
    stored = result(env.owner.get(f"/v3/pods/templates/{target}/tags/{tag['tag_timestamp']}"))
    assert stored[0]["pod_definition"] == tag["pod_definition"]

    # A pod created from the new tag derives the same definition.
    copy_id = new_id("copy")
    env.pod(copy_id, template=f"{target}:snapshot1")
    assert definition_of(env.derived(copy_id)) == definition_of(env.derived(pod_id))


def test_save_pod_without_template_as_tag_and_recreate(env: Env, new_id: Callable[[str], str]) -> None:
    target, pod_id = new_id("target"), new_id("pod")
    env.add_template(target)
    env.pod(
        pod_id,
        image=IMAGE,
        description="plain pod",
        command=["sh", "-c", "sleep 1000"],
        environment_variables={"X": "1"},
        resources={"cpu_limit": 1000},
    )
    tag = result(
        env.owner.post(
            f"/v3/pods/{pod_id}/save_pod_as_template_tag",
            json={"template_id": target, "commit_message": "plain"},
        )
    )
    assert tag["tag"] == "latest"
    definition = tag["pod_definition"]
    assert definition["image"] == IMAGE and definition["description"] == "plain pod"
    assert definition["command"] == ["sh", "-c", "sleep 1000"]
    assert definition["environment_variables"] == {"X": "1"}
    assert definition["resources"] == {"cpu_limit": 1000}
    assert not {"pod_id", "status", "status_requested", "creation_ts", "template"} & set(definition)
    copy_id = new_id("copy")
    env.pod(copy_id, template=target)
    assert definition_of(env.derived(copy_id)) == definition_of(env.derived(pod_id))


def test_save_pod_as_tag_of_its_own_template_is_never_a_500(env: Env, new_id: Callable[[str], str]) -> None:
    template_id, pod_id = new_id("own"), new_id("pod")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": IMAGE, "environment_variables": {"A": "1"}})
    env.pod(pod_id, template=template_id, environment_variables={"B": "2"})
    r = env.owner.post(
        f"/v3/pods/{pod_id}/save_pod_as_template_tag",
        json={"template_id": template_id, "tag": "custom", "commit_message": "my variant"},
    )
    if r.status_code == 200:
        copy_id = new_id("copy")
        env.pod(copy_id, template=f"{template_id}:custom")
        assert definition_of(env.derived(copy_id)) == definition_of(env.derived(pod_id))
    else:
        assert_error(r, 400, template_id)


def test_save_pod_as_template_tag_bad_input(env: Env, new_id: Callable[[str], str]) -> None:
    target, pod_id = new_id("target"), new_id("pod")
    env.add_template(target)
    env.pod(pod_id, image=IMAGE)
    before = env.server.rows(TemplateTag, tenant_id="default")
    url = f"/v3/pods/{pod_id}/save_pod_as_template_tag"
    assert_error(env.owner.post(url, json={"template_id": target}), 400, "commit_message")
    assert_error(
        env.owner.post(url, json={"template_id": target, "commit_message": "  "}), 400, "commit_message"
    )
    assert_error(
        env.owner.post(url, json={"template_id": target, "commit_message": "m", "tag": "bad tag"}), 400, "tag"
    )
    assert_error(env.owner.post(url, json={"template_id": new_id("nosuch"), "commit_message": "m"}), 404)
    assert_error(
        env.owner.post(
            f"/v3/pods/{new_id('nopod')}/save_pod_as_template_tag",
            json={"template_id": target, "commit_message": "m"},
        ),
        404,
    )
    assert env.server.rows(TemplateTag, tenant_id="default") == before


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "template_id",
    ["Mongo", "ab", "my-template", "my_template", "1mongo", "tags", "mongo db", "a" * 65, "", "mongö"],
)
def test_bad_template_ids_are_400(env: Env, template_id: str) -> None:
    before = env.server.rows(Template, tenant_id="default")
    assert_error(env.owner.post("/v3/pods/templates", json={"template_id": template_id}), 400, "template_id")
    assert env.server.rows(Template, tenant_id="default") == before


def test_add_template_needs_an_id_that_is_unique_in_the_tenant(
    env: Env, new_id: Callable[[str], str]
) -> None:
    assert_error(env.owner.post("/v3/pods/templates", json={"description": "no id"}), 400, "template_id")
    template_id = new_id("twice")
    env.add_template(template_id)
    assert_error(env.owner.post("/v3/pods/templates", json={"template_id": template_id}), 409, template_id)
    # Another user may not take the id either (ids are unique per tenant).
    assert_error(env.other.post("/v3/pods/templates", json={"template_id": template_id}), 409)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metatags", [""]),
        ("metatags", ["x" * 65]),
        ("metatags", ["caf\u00e9"]),
        ("metatags", "db"),
        ("description", "x" * 256),
        ("description", "caf\u00e9"),
        ("archive_message", "x" * 256),
        ("owner", "me"),
    ],
)
def test_add_and_update_template_validate_fields_alike(
    env: Env, new_id: Callable[[str], str], field: str, value: Any
) -> None:
    template_id = new_id("valid")
    assert_error(
        env.owner.post("/v3/pods/templates", json={"template_id": template_id, field: value}), 400, field
    )
    assert env.server.rows(Template, tenant_id="default", template_id=template_id) == []
    env.add_template(template_id)
    before = env.server.rows(Template, tenant_id="default", template_id=template_id)
    assert_error(env.owner.put(f"/v3/pods/templates/{template_id}", json={field: value}), 400, field)
    assert env.server.rows(Template, tenant_id="default", template_id=template_id) == before


def test_add_tag_needs_a_commit_message_and_a_valid_tag(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("commit")
    env.add_template(template_id)
    url = f"/v3/pods/templates/{template_id}/tags"
    definition = {"image": IMAGE}
    assert_error(env.owner.post(url, json={"pod_definition": definition}), 400, "commit_message")
    assert_error(
        env.owner.post(url, json={"pod_definition": definition, "commit_message": ""}), 400, "commit_message"
    )
    assert_error(
        env.owner.post(url, json={"pod_definition": definition, "commit_message": "   "}),
        400,
        "commit_message",
    )
    assert_error(env.owner.post(url, json={"commit_message": "no definition"}), 400, "pod_definition")
    for tag in ("bad tag", "v1:2", "v1@2", "", "x" * 81, "ü"):
        assert_error(
            env.owner.post(url, json={"pod_definition": definition, "commit_message": "m", "tag": tag}),
            400,
            "tag",
        )
    assert_error(
        env.owner.post(url, json={"pod_definition": {"image": IMAGE, "pod_id": "x"}, "commit_message": "m"}),
        400,
        "pod_id",
    )
    assert_error(
        env.owner.post(
            url,
            json={
                "pod_definition": {"image": IMAGE, "networking": {"default": {"port": 1}}},
                "commit_message": "m",
            },
        ),
        400,
        "port",
    )
    assert_error(
        env.owner.post(
            url, json={"pod_definition": {"image": IMAGE, "template": "Bad@Ref"}, "commit_message": "m"}
        ),
        400,
        "template",
    )
    assert env.server.rows(TemplateTag, tenant_id="default", template_id=template_id) == []


def test_unknown_template_or_tag_is_404(env: Env, new_id: Callable[[str], str]) -> None:
    missing = new_id("missing")
    template_id = new_id("known")
    env.add_template(template_id)
    tag = env.add_tag(template_id, {"image": IMAGE}, tag="v1")
    assert_error(env.owner.get(f"/v3/pods/templates/{missing}"), 404, missing)
    assert_error(env.owner.get("/v3/pods/templates/Bad-Id"), 404)
    assert_error(env.owner.put(f"/v3/pods/templates/{missing}", json={"description": "x"}), 404, missing)
    assert_error(env.owner.delete(f"/v3/pods/templates/{missing}"), 404, missing)
    assert_error(env.owner.get(f"/v3/pods/templates/{missing}/tags"), 404, missing)
    assert_error(env.owner.get(f"/v3/pods/templates/{missing}/tags/latest"), 404, missing)
    assert_error(
        env.owner.post(
            f"/v3/pods/templates/{missing}/tags",
            json={"pod_definition": {"image": IMAGE}, "commit_message": "m"},
        ),
        404,
        missing,
    )
    assert_error(env.owner.get(f"/v3/pods/templates/{template_id}/tags/nosuch"), 404, "nosuch")
    assert_error(env.owner.get(f"/v3/pods/templates/{template_id}/tags/v1@2000-01-01-00:00:00"), 404)
    assert len(result(env.owner.get(f"/v3/pods/templates/{template_id}/tags/{tag['tag_timestamp']}"))) == 1

    before = env.server.rows(Pod, tenant_id="default")
    assert_error(env.create_pod(new_id("pod"), template=missing), 404, missing)
    assert_error(env.create_pod(new_id("pod"), template=f"{missing}:v1"), 404, missing)
    assert_error(env.create_pod(new_id("pod"), template=f"{template_id}:nosuch"), 404, "nosuch")
    assert_error(
        env.create_pod(new_id("pod"), template=f"{template_id}:v1@2000-01-01-00:00:00"),
        404,
        "2000-01-01-00:00:00",
    )
    assert env.server.rows(Pod, tenant_id="default") == before


def test_chained_reference_to_unknown_template_or_tag_is_refused(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id, missing = new_id("chain"), new_id("missing")
    env.add_template(template_id)
    url = f"/v3/pods/templates/{template_id}/tags"
    r = env.owner.post(url, json={"pod_definition": {"template": missing}, "commit_message": "m"})
    assert_error(r, (400, 404), missing)
    r = env.owner.post(
        url, json={"pod_definition": {"template": f"{template_id}x:v9"}, "commit_message": "m"}
    )
    assert_error(r, (400, 404))
    env.add_tag(template_id, {"image": IMAGE}, tag="v1")
    other = new_id("chained")
    env.add_template(other)
    r = env.owner.post(
        f"/v3/pods/templates/{other}/tags",
        json={"pod_definition": {"template": f"{template_id}:v2"}, "commit_message": "m"},
    )
    assert_error(r, (400, 404), "v2")
    assert env.server.rows(TemplateTag, tenant_id="default", template_id=other) == []


@pytest.mark.parametrize(
    "reference",
    [
        "{t}@2025-01-30-17:14:14",  # '@' without ':'
        "{t}:latest@",  # empty timestamp
        "{t}:latest@2025-01-30",  # incomplete timestamp
        "{t}:latest@notatime",
        "{t}:latest@2025-13-45-25:61:61",  # impossible date
        "{t}:latest@2025-01-30-17:14:14@2025-01-30-17:14:14",
        "{t}:@2025-01-30-17:14:14",  # empty tag
        "{t}:",  # empty tag
        ":latest",  # empty name
        "Bad:latest",
        "{t}:bad tag",
        "{t}:la$test",
    ],
)
def test_malformed_template_references_are_400(
    env: Env, new_id: Callable[[str], str], reference: str
) -> None:
    template_id = new_id("ref")
    env.add_template(template_id)
    env.add_tag(template_id, {"image": IMAGE})
    before = env.server.rows(Pod, tenant_id="default")
    assert_error(env.create_pod(new_id("pod"), template=reference.format(t=template_id)), 400, "template")
    assert env.server.rows(Pod, tenant_id="default") == before


def test_template_must_be_a_string(env: Env, new_id: Callable[[str], str]) -> None:
    assert_error(env.create_pod(new_id("pod"), template=["x"]), 400, "template")
    assert_error(env.create_pod(new_id("pod"), template=None), 400, "template")


# ------------------------------------------------------------------------------------------------ starter catalog


@pytest.fixture(scope="module")
def catalog_srv(make_module_server: Any) -> Any:
    srv = make_module_server(import_starter_catalog=True)
    srv.add_user("cataloguser")
    srv.add_user("cataloguser", tenant="other")
    return srv


def test_starter_catalog_is_public_to_a_normal_user(catalog_srv: Any) -> None:
    user = catalog_srv.client("cataloguser")
    listed = {t["template_id"]: t for t in result(user.get("/v3/pods/templates"))}
    expected = {t.template_id for t in CATALOG}
    assert {
        "postgres",
        "neo4j",
        "mongo",
        "redis",
        "jupyterlab",
        "codeserver",
        "ollama",
        "openwebui",
    } <= expected
    assert expected <= set(listed)
    for template in CATALOG:
        assert listed[template.template_id]["description"] == template.description
        tags = result(user.get(f"/v3/pods/templates/{template.template_id}/tags"))
        assert sorted(x["tag"] for x in tags) == sorted(x.tag for x in template.tags)
        # Public means READ for everyone: a normal user cannot change it.
        assert_error(
            user.put(f"/v3/pods/templates/{template.template_id}", json={"description": "mine"}), 403
        )
        perms = result(
            catalog_srv.client("admin").get(f"/v3/pods/templates/{template.template_id}/permissions")
        )
        assert "*:READ" in perms["permissions"] and "admin:ADMIN" in perms["permissions"]
    # Other tenants do not get the default tenant's catalog.
    other = catalog_srv.client("cataloguser", tenant="other")
    assert not expected & {t["template_id"] for t in result(other.get("/v3/pods/templates"))}
    assert_error(other.get("/v3/pods/templates/postgres"), 404)


def test_starter_catalog_images_are_allowlisted(catalog_srv: Any) -> None:
    images = result(catalog_srv.client("cataloguser").get("/v3/pods/images"))
    listed = {i["image"] for i in images}
    for template_id, tag, definition in CATALOG_TAGS:
        image = definition.get("image")
        if image:
            name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
            assert image in listed or name in listed, (template_id, tag, image, sorted(listed))


@pytest.mark.parametrize(
    ("template_id", "tag", "definition"), CATALOG_TAGS, ids=[f"{t}:{g}" for t, g, _ in CATALOG_TAGS]
)
def test_each_starter_template_tag_resolves(
    catalog_srv: Any, new_id: Callable[[str], str], template_id: str, tag: str, definition: dict[str, Any]
) -> None:
    user = catalog_srv.client("cataloguser")
    pod_id = new_id("cat")
    pod = result(
        user.post(
            "/v3/pods", json={"pod_id": pod_id, "template": f"{template_id}:{tag}", "status_requested": "OFF"}
        )
    )
    assert re.fullmatch(rf"{template_id}:{re.escape(tag)}@{TS_RE}", pod["template"])
    d = result(user.get(f"/v3/pods/{pod_id}/derived"))
    assert d["image"] == definition["image"]
    assert d["environment_variables"] == definition.get("environment_variables", {})
    nets = strip_urls(d["networking"])
    for key, stanza in (definition.get("networking") or {}).items():
        for field, value in stanza.items():
            assert nets[key][field] == value, (key, field)
    for field, value in (definition.get("resources") or {}).items():
        assert d["resources"][field] == value
    if "time_to_stop_default" in definition:
        assert d["time_to_stop_default"] == definition["time_to_stop_default"]
    result(user.delete(f"/v3/pods/{pod_id}"))


def _run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``openpods`` command, in a subprocess with no OPENPODS_* settings from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPODS_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "openpods"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def _invoke_cli(args: list[str], **env: str | None) -> Any:
    """The same command in-process (typer's runner: real argument parsing and exit codes, no start-up cost)."""
    from typer.testing import CliRunner

    from openpods.cli import app

    unset = {k: None for k in os.environ if k.startswith("OPENPODS_")}
    return CliRunner().invoke(app, args, env={**unset, **env})


def _write_catalog(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


GOOD_FILE = "template_id: {tid}\ndescription: from the CLI\ntags:\n  - tag: '1'\n    commit_message: first\n"
GOOD_FILE += f"    pod_definition:\n      image: {IMAGE}\n"
NO_COMMIT_MESSAGE = '{"template_id": "brokenone", "tags": [{"tag": "v1", "pod_definition": {"image": "x"}}]}'
BAD_PORT = (
    '{"template_id": "brokenone", "tags": [{"commit_message": "m", "pod_definition": '
    '{"image": "x", "networking": {"default": {"port": 99999}}}}]}'
)


def test_cli_import_of_a_directory_with_a_bad_file_fails_naming_file_and_field(tmp_path: Path) -> None:
    catalog_dir = _write_catalog(
        tmp_path / "catalog", {"good.yaml": GOOD_FILE.format(tid="goodone"), "broken.json": NO_COMMIT_MESSAGE}
    )
    proc = _run_cli(["templates", "import", str(catalog_dir), "--data-dir", str(tmp_path / "data")], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "broken.json" in output and "commit_message" in output, output
    assert "Traceback" not in output, output

    (catalog_dir / "broken.json").write_text(BAD_PORT)
    run = _invoke_cli(["templates", "import", str(catalog_dir), "--data-dir", str(tmp_path / "data")])
    assert run.exit_code not in (0, None), run.output
    assert run.exception is None or isinstance(run.exception, SystemExit), run.exception  # no crash
    assert "broken.json" in run.output and "port" in run.output, run.output


def test_cli_import_into_a_running_server_makes_templates_visible(
    catalog_srv: Any, tmp_path: Path, new_id: Callable[[str], str]
) -> None:
    template_id = new_id("cli")
    catalog_srv.allow_image(IMAGE)
    db = {"OPENPODS_DATABASE_URL": catalog_srv.settings.database_url}
    user = catalog_srv.client("cataloguser")

    # A directory with one bad file imports nothing at all.
    mixed = _write_catalog(
        tmp_path / "mixed", {"good.yaml": GOOD_FILE.format(tid=template_id), "broken.json": NO_COMMIT_MESSAGE}
    )
    run = _invoke_cli(["templates", "import", str(mixed), "--data-dir", str(tmp_path / "data")], **db)
    assert run.exit_code not in (0, None) and "broken.json" in run.output, run.output
    assert_error(user.get(f"/v3/pods/templates/{template_id}"), 404)

    good = _write_catalog(tmp_path / "good", {f"{template_id}.yaml": GOOD_FILE.format(tid=template_id)})
    args = ["templates", "import", str(good), "--data-dir", str(tmp_path / "data")]
    run = _invoke_cli(args, **db)
    assert run.exit_code == 0, (run.output, run.exception)
    got = result(user.get(f"/v3/pods/templates/{template_id}"))
    assert got["description"] == "from the CLI"
    pod_id = new_id("pod")
    result(
        user.post(
            "/v3/pods", json={"pod_id": pod_id, "template": f"{template_id}:1", "status_requested": "OFF"}
        )
    )
    assert result(user.get(f"/v3/pods/{pod_id}/derived"))["image"] == IMAGE
    # Running it again changes nothing.
    tags_before = catalog_srv.rows(TemplateTag, tenant_id="default", template_id=template_id)
    run = _invoke_cli(args, **db)
    assert run.exit_code == 0, (run.output, run.exception)
    assert catalog_srv.rows(TemplateTag, tenant_id="default", template_id=template_id) == tags_before
