"""Image references split as engines read them, and the allowlist rule for digests (issue 9, item 3)."""

from __future__ import annotations

import pytest

from openpods.domain.pods import ImageRef, digest_needs_engine, image_allowed, parse_image_ref

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(("ref", "expected"), [
    ("nginx", ImageRef("nginx")),
    ("nginx:1.25", ImageRef("nginx", "1.25")),
    (f"nginx@{D1}", ImageRef("nginx", None, D1)),
    (f"nginx:1.25@{D1}", ImageRef("nginx", "1.25", D1)),
    ("localhost:5000/org/app", ImageRef("localhost:5000/org/app")),
    ("localhost:5000/org/app:v2", ImageRef("localhost:5000/org/app", "v2")),
    (f"localhost:5000/org/app:v2@{D1}", ImageRef("localhost:5000/org/app", "v2", D1)),
    (f"registry.example.org:443/app@{D1.upper().replace('SHA256', 'sha256')}",
     ImageRef("registry.example.org:443/app", None, D1)),
])
def test_parse(ref: str, expected: ImageRef) -> None:
    assert parse_image_ref(ref) == expected


@pytest.mark.parametrize(("name", "canonical"), [
    ("nginx", "docker.io/library/nginx"),
    ("org/app", "docker.io/org/app"),
    ("localhost/openpods-test/http", "localhost/openpods-test/http"),
    ("quay.io/org/app", "quay.io/org/app"),
    ("registry:5000/app", "registry:5000/app"),
])
def test_canonical_name(name: str, canonical: str) -> None:
    assert parse_image_ref(name).canonical_name == canonical


def allowed(image: str, entries: list[str], engine_tags: list[str] | None = None) -> bool:
    return image_allowed(image, "t1", [(e, ["**"]) for e in entries], engine_tags=engine_tags)


def test_tags_as_before() -> None:
    assert allowed("org/app:v1", ["org/app"])
    assert allowed("org/app:v1", ["org/app:v1"])
    assert not allowed("org/app:v2", ["org/app:v1"])
    assert not allowed("org/app:v1", [f"org/app@{D1}"])  # a pinned entry admits its digest only


def test_digest_needs_an_entry_naming_it_or_the_engine() -> None:
    for image in (f"org/app@{D1}", f"org/app:v1@{D1}"):
        assert not allowed(image, ["org/app"])  # the old rule admitted both
        assert not allowed(image, ["org/app:v1"])
        assert digest_needs_engine(image, "t1", [("org/app", ["**"])])
    assert allowed(f"org/app@{D1}", [f"org/app@{D1}"])
    assert allowed(f"org/app:v1@{D1}", [f"org/app:v1@{D1}"])
    assert not allowed(f"org/app@{D2}", [f"org/app@{D1}"])
    assert not allowed(f"other/app@{D1}", [f"org/app@{D1}"])
    assert not digest_needs_engine(f"org/app@{D1}", "t1", [(f"org/app@{D1}", ["**"])])


def test_engine_tags_must_be_an_allowed_tag_of_the_same_name() -> None:
    # The engine says the digest is org/app:v1's (names as the engine writes them).
    tags = ["docker.io/org/app:v1"]
    assert allowed(f"org/app@{D1}", ["org/app"], tags)
    assert allowed(f"org/app@{D1}", ["org/app:v1"], tags)
    assert allowed(f"org/app:v1@{D1}", ["org/app:v1"], tags)
    assert not allowed(f"org/app:v2@{D1}", ["org/app"], tags)  # the reference's tag is not the digest's
    assert not allowed(f"org/app@{D1}", ["org/app:v2"], tags)
    # The digest of another image, under an allowed name: refused.
    assert not allowed(f"org/app@{D1}", ["org/app"], ["docker.io/evil/miner:latest"])
    assert not allowed(f"org/app@{D1}", ["org/app"], [])


def test_tenant_scopes_apply_to_digest_entries() -> None:
    entries = [(f"org/app@{D1}", ["t2"])]
    assert not image_allowed(f"org/app@{D1}", "t1", entries)
    assert image_allowed(f"org/app@{D1}", "t2", entries)
