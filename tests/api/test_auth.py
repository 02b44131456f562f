"""The embedded authenticator and token checks, through HTTP and the unmodified tapipy client.

Covers: tokens for ``Tapis(base_url, username, password)`` without tenant_id, the token's claims and signature,
401 for every kind of bad token, /v3/sites and /v3/tenants, the second tenant, the healthcheck, and
``Content-Type: application/json`` (no charset) on every kind of response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tapipy import errors as tapipy_errors
from tapipy.tapis import Tapis

from openpods.store.tables import Pod

IMAGE = "localhost/openpods-test/http"


@pytest.fixture(scope="module")
def users(server: Any) -> dict[str, str]:
    """alice (default tenant), carol (tenant 'other' only), dave (in both tenants, different passwords)."""
    server.allow_image(IMAGE)
    return {
        "alice": server.add_user("alice", "alice-secret"),
        "carol": server.add_user("carol", "carol-secret", tenant="other"),
        "dave": server.add_user("dave", "dave-default", tenant="default"),
        "dave@other": server.add_user("dave", "dave-other", tenant="other"),
    }


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _signing_key(server: Any) -> rsa.RSAPrivateKey:
    pem = (server.settings.data_dir / "keys" / "jwt-signing-key.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _assert_401(server: Any, token: str) -> None:
    for path in ("/v3/pods", "/v3/pods/images"):
        r = server.client(token=token).get(path)
        assert r.status_code == 401, (path, r.status_code, r.text)
        body = r.json()
        assert body["status"] == "error"
        assert body["result"] is None
        assert r.headers["content-type"] == "application/json"


# ------------------------------------------------------------------------------------------------ tokens


def test_tapipy_without_tenant_id_finds_tenant_and_gets_tokens(server: Any, users: dict[str, str]) -> None:
    # The user guide's example, as written (base_url, username, password; no tenant_id).
    t = Tapis(base_url=server.base_url, username="alice", password="alice-secret")
    assert t.tenant_id == "default"
    t.get_tokens()
    token = t.access_token.access_token
    assert isinstance(token, str) and token.count(".") == 2
    assert t.access_token.claims["tapis/username"] == "alice"
    # The token works for a pods call made by tapipy.
    assert t.pods.list_pods() == []


def test_token_claims_and_signature(server: Any, users: dict[str, str]) -> None:
    r = server.client().post(
        "/v3/oauth2/tokens", json={"username": "alice", "password": "alice-secret", "grant_type": "password"}
    )
    assert r.status_code in (200, 201), r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) >= {"result", "status", "message", "version", "metadata"}
    assert body["status"] == "success"
    access = body["result"]["access_token"]
    token = access["access_token"]

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    tenants = {t["tenant_id"]: t for t in server.client().get("/v3/tenants").json()["result"]}
    claims = jwt.decode(token, tenants["default"]["public_key"], algorithms=["RS256"])

    now = time.time()
    assert claims["tapis/tenant_id"] == "default"
    assert claims["tapis/username"] == "alice"
    assert claims["tapis/token_type"] == "access"
    assert claims["sub"] == "alice@default"
    assert claims["jti"] == access["jti"]
    uuid.UUID(claims["jti"])  # a real unique id
    assert now - 60 < claims["exp"] - server.settings.token_ttl_sec < now + 60
    assert access["expires_in"] == server.settings.token_ttl_sec
    assert isinstance(access["expires_at"], str) and access["expires_at"]

    # A second token has another jti.
    again = server.client().post("/v3/oauth2/tokens", json={"username": "alice", "password": "alice-secret"})
    assert _claims(again.json()["result"]["access_token"]["access_token"])["jti"] != claims["jti"]


def test_wrong_password_and_unknown_user_are_401(server: Any, users: dict[str, str]) -> None:
    anon = server.client()
    wrong = anon.post(
        "/v3/oauth2/tokens", json={"username": "alice", "password": "nope", "grant_type": "password"}
    )
    unknown = anon.post(
        "/v3/oauth2/tokens", json={"username": "nobody", "password": "x", "grant_type": "password"}
    )
    for r in (wrong, unknown):
        assert r.status_code == 401, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["status"] == "error"
        assert r.json()["result"] is None
    # The answer does not reveal whether the user exists.
    assert wrong.json()["message"] == unknown.json()["message"]

    t = Tapis(base_url=server.base_url, username="alice", password="not-her-password")
    with pytest.raises(tapipy_errors.UnauthorizedError):
        t.get_tokens()


@pytest.mark.parametrize(
    "username",
    ["a\x00b", "x" * 128, "ALICE", "alice ", "ålice"],
    ids=["nul", "long", "upper", "trailing-space", "non-ascii"],
)
def test_odd_usernames_are_401_not_500(server: Any, users: dict[str, str], username: str) -> None:
    """Usernames that do not exist (or cannot exist) get no token: 401 (or 400 for a malformed one), never a
    database error."""
    r = server.client().post("/v3/oauth2/tokens", json={"username": username, "password": "alice-secret"})
    assert r.status_code in (400, 401), (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/json"
    assert r.json()["result"] is None


def test_no_token_and_garbage_token_are_401(server: Any) -> None:
    r = server.client().get("/v3/pods")
    assert r.status_code == 401
    assert r.json()["status"] == "error"
    for garbage in ("abc", "a.b.c", "Bearer x", "eyJhbGciOiJSUzI1NiJ9.e30."):
        _assert_401(server, garbage)


def test_expired_token_is_401(server: Any, users: dict[str, str]) -> None:
    good = server.token("alice")
    claims = _claims(good)
    now = int(time.time())
    claims.update(iat=now - 7200, exp=now - 3600, jti=str(uuid.uuid4()))
    expired = jwt.encode(claims, _signing_key(server), algorithm="RS256")
    _assert_401(server, expired)

    # tapipy sends an expired token anyway: the server must refuse it.
    t = server.tapis("alice", "alice-secret")
    t.access_token.access_token = expired
    with pytest.raises(tapipy_errors.UnauthorizedError):
        t.pods.list_pods()


def test_expired_token_issued_by_the_service_is_401(server: Any, users: dict[str, str]) -> None:
    # A negative lifetime gives a token whose exp is already past, signed by the service itself.
    token = server.ctx.tokens.issue("default", "alice", ttl_sec=-3600)["access_token"]
    assert _claims(token)["exp"] < time.time()
    _assert_401(server, token)
    # Leeway is small: a token expired 5 seconds ago is refused as well.
    token = server.ctx.tokens.issue("default", "alice", ttl_sec=-5)["access_token"]
    _assert_401(server, token)


def test_token_without_exp_is_401(server: Any) -> None:
    claims = _claims(server.token("alice"))
    claims.pop("exp")
    _assert_401(server, jwt.encode(claims, _signing_key(server), algorithm="RS256"))


def test_tampered_signature_is_401(server: Any, users: dict[str, str]) -> None:
    token = server.token("alice")
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    _assert_401(server, f"{head}.{payload}.{_b64(bytes(raw))}")

    # Payload changed (alice → admin), signature kept.
    claims = _claims(token)
    claims["tapis/username"] = "admin"
    forged_payload = _b64(json.dumps(claims).encode())
    _assert_401(server, f"{head}.{forged_payload}.{sig}")


def test_token_signed_by_another_key_is_401(server: Any) -> None:
    claims = _claims(server.token("admin"))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _assert_401(server, jwt.encode(claims, other_key, algorithm="RS256"))


def test_unsigned_and_hmac_tokens_are_401(server: Any) -> None:
    claims = _claims(server.token("admin"))
    head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    _assert_401(server, f"{head}.{_b64(json.dumps(claims).encode())}.")
    # Algorithm confusion: HS256 keyed with the (public) RSA public key.
    public_pem = server.ctx.tokens.public_key_pem.encode()
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    _assert_401(server, f"{head}.{body}.{_b64(sig)}")


def test_token_of_unknown_tenant_is_401(server: Any) -> None:
    # Signed with the server's own key, but for a tenant the server does not have.
    claims = _claims(server.token("alice"))
    claims["tapis/tenant_id"] = "nosuchtenant"
    claims["iss"] = claims["iss"].replace("localhost", "nosuchtenant.example")
    _assert_401(server, jwt.encode(claims, _signing_key(server), algorithm="RS256"))
    claims["iss"] = server.ctx.tokens.issuer("default")  # issuer of a real tenant, tenant claim unknown
    _assert_401(server, jwt.encode(claims, _signing_key(server), algorithm="RS256"))


def test_token_claims_must_agree_with_issuer(server: Any) -> None:
    # Tenant claim of 'other' with the issuer of 'default' (or vice versa) is not a token we issued.
    claims = _claims(server.token("alice"))
    claims["tapis/tenant_id"] = "other"
    _assert_401(server, jwt.encode(claims, _signing_key(server), algorithm="RS256"))


def test_token_without_username_is_401(server: Any) -> None:
    claims = _claims(server.token("alice"))
    claims.pop("tapis/username")
    _assert_401(server, jwt.encode(claims, _signing_key(server), algorithm="RS256"))


# ------------------------------------------------------------------------------------------------ tenants


def test_sites_and_tenants_without_token(server: Any) -> None:
    anon = server.client()
    sites = anon.get("/v3/sites")
    assert sites.status_code == 200
    assert sites.headers["content-type"] == "application/json"
    site = sites.json()["result"][0]
    assert site["site_id"] == server.settings.site_id
    assert site["base_url"] == server.base_url

    r = anon.get("/v3/tenants")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    tenants = {t["tenant_id"]: t for t in r.json()["result"]}
    assert set(tenants) == {"default", "other"}
    assert tenants["default"]["base_url"] == server.base_url
    assert tenants["other"]["base_url"] == server.other_base_url
    for tenant in tenants.values():
        assert tenant["site_id"] == server.settings.site_id
        assert "BEGIN PUBLIC KEY" in tenant["public_key"]

    one = anon.get("/v3/tenants/other")
    assert one.status_code == 200
    assert one.json()["result"]["tenant_id"] == "other"
    missing = anon.get("/v3/tenants/nosuch")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"


def test_second_tenant_tokens_through_its_base_url(server: Any, users: dict[str, str]) -> None:
    t = Tapis(base_url=server.other_base_url, username="carol", password="carol-secret")
    assert t.tenant_id == "other"
    t.get_tokens()
    claims = t.access_token.claims
    assert claims["tapis/tenant_id"] == "other"
    assert claims["tapis/username"] == "carol"
    # tapipy's own validation against the tenant's public key from /v3/tenants passes.
    assert t.validate_token(t.access_token.access_token)["tapis/tenant_id"] == "other"
    assert t.pods.list_pods() == []

    # carol exists only in 'other': the default tenant's base_url does not know her.
    with pytest.raises(tapipy_errors.UnauthorizedError):
        Tapis(base_url=server.base_url, username="carol", password="carol-secret").get_tokens()


def test_same_username_in_two_tenants_are_two_users(server: Any, users: dict[str, str]) -> None:
    default = Tapis(base_url=server.base_url, username="dave", password="dave-default")
    default.get_tokens()
    assert default.access_token.claims["tapis/tenant_id"] == "default"
    other = Tapis(base_url=server.other_base_url, username="dave", password="dave-other")
    other.get_tokens()
    assert other.access_token.claims["tapis/tenant_id"] == "other"
    # Each password is only good in its own tenant.
    with pytest.raises(tapipy_errors.UnauthorizedError):
        Tapis(base_url=server.other_base_url, username="dave", password="dave-default").get_tokens()
    with pytest.raises(tapipy_errors.UnauthorizedError):
        Tapis(base_url=server.base_url, username="dave", password="dave-other").get_tokens()


def test_other_tenant_token_sees_nothing_of_default(server: Any, users: dict[str, str], new_id: Any) -> None:
    pod_id = new_id("authpod")
    alice = server.client("alice")
    assert alice.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE}).status_code == 200
    carol = server.client("carol", tenant="other")
    assert carol.get(f"/v3/pods/{pod_id}").status_code == 404
    assert pod_id not in [p["pod_id"] for p in carol.get("/v3/pods").json()["result"]]
    # Even 'alice' of tenant 'other' (a token the server issued for that tenant).
    other_alice = server.client(token=server.token("alice", tenant="other"))
    assert other_alice.get(f"/v3/pods/{pod_id}").status_code == 404
    assert len(server.rows(Pod, pod_id=pod_id)) == 1


def test_admin_of_default_tenant_is_not_admin_in_other(server: Any) -> None:
    # 'admin' exists only in the default tenant; a token for 'admin' in 'other' is an ordinary user there.
    fake_admin = server.client(token=server.token("admin", tenant="other"))
    r = fake_admin.post("/v3/pods/images", json={"image": "localhost/openpods-test/evil", "tenants": ["**"]})
    assert r.status_code == 403, r.text


def test_userinfo(server: Any, users: dict[str, str]) -> None:
    r = server.client("alice").get("/v3/oauth2/userinfo")
    assert r.status_code == 200
    assert r.json()["result"]["username"] == "alice"
    assert server.client().get("/v3/oauth2/userinfo").status_code == 401


# ------------------------------------------------------------------------------------------------ misc


@pytest.mark.parametrize("path", ["/healthcheck", "/v3/pods/healthcheck"])
def test_healthcheck_without_token(server: Any, path: str) -> None:
    r = httpx.get(server.url(path))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "success"
    assert set(body) == {"result", "status", "message", "version", "metadata"}


def test_content_type_is_exactly_application_json(server: Any, users: dict[str, str], new_id: Any) -> None:
    alice = server.client("alice")
    anon = server.client()
    pod_id = new_id("ctpod")
    responses: dict[str, httpx.Response] = {
        "200 list": alice.get("/v3/pods"),
        "200 create": alice.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE}),
        "201 token": anon.post("/v3/oauth2/tokens", json={"username": "alice", "password": "alice-secret"}),
        "400 validation": alice.post("/v3/pods", json={"pod_id": "Bad-Id", "image": IMAGE}),
        "400 malformed json": alice.post(
            "/v3/pods", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        "401 no token": anon.get("/v3/pods"),
        "401 bad token": server.client(token="x.y.z").get(f"/v3/pods/{pod_id}"),
        "403 not admin": alice.post("/v3/pods/images", json={"image": "localhost/x/y", "tenants": ["**"]}),
        "404 no pod": alice.get("/v3/pods/nosuchpodhere"),
        "404 no route": alice.get("/v3/nosuchthing"),
        "405 method": alice.patch(f"/v3/pods/{pod_id}"),
        "409 duplicate": alice.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE}),
        "200 no change": alice.put(f"/v3/pods/{pod_id}", json={}),
    }
    expected = {name: int(name.split()[0]) for name in responses}
    for name, r in responses.items():
        assert r.status_code == expected[name], (name, r.status_code, r.text)
        assert r.headers.get("content-type") == "application/json", (name, r.headers.get("content-type"))
        body = r.json()
        assert set(body) >= {"result", "status", "message", "version", "metadata"}, name
        assert body["status"] == (
            "success" if r.status_code < 300 and name != "200 no change" else "error"
        ), name
        if r.status_code >= 400:
            assert body["message"], name


def test_tapipy_parses_results(server: Any, users: dict[str, str]) -> None:
    # tapipy returns raw bytes when Content-Type carries a charset; a parsed result proves the header.
    t = server.tapis("alice", "alice-secret")
    images = t.pods.get_images()
    assert isinstance(images, list)
    assert any(getattr(i, "image", None) == IMAGE for i in images)
