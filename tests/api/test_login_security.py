"""Issue 9, items 6 and 11 at the API: password-guess throttling (per user, per client address, across API
processes), token revocation (logout, password change through API and CLI, `openpods users revoke`), pod
login credentials refused by the API, and the Jupyter rules (reserved ids, ensure, uploads).

Client addresses are varied with X-Forwarded-For: the test servers trust it from 127.0.0.1 (the default of
``forwarded_allow_ips``, for the Traefik OpenPods runs on the same machine).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from openpods.auth import pod_access as pa
from openpods.cli import app as cli_app
from openpods.domain.pods import jupyter_pod_id
from openpods.store.tables import ActionLog, Permission, Pod

IMAGE = "localhost/openpods-test/http"


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _token_request(srv: Any, username: str, password: str, address: str = "10.0.0.1") -> httpx.Response:
    return srv.client(headers={"X-Forwarded-For": address}).post(
        "/v3/oauth2/tokens", json={"username": username, "password": password, "grant_type": "password"}
    )


def _assert_429(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "error" and body["result"] is None and "try again" in body["message"]
    retry = int(r.headers["retry-after"])
    assert retry >= 1
    return retry


# ------------------------------------------------------------------------------------------------ throttling


@pytest.fixture(scope="module")
def throttled(make_module_server: Any) -> Any:
    return make_module_server(
        login_throttle_user_free_failures=3,
        login_throttle_ip_free_failures=6,
        login_throttle_base_delay_sec=1.0,
        login_throttle_max_delay_sec=2.0,
    )


def test_password_guesses_per_user_are_delayed_and_a_success_resets(throttled: Any) -> None:
    srv = throttled
    user = _name("guess")
    srv.add_user(user, "right-password")
    # three free failures (from three addresses: the per-address limit is not what stops them)
    for i in range(3):
        assert _token_request(srv, user, "wrong", f"10.1.0.{i}").status_code == 401
    # then delayed: even the right password is not checked while the delay runs
    retry = _assert_429(_token_request(srv, user, "right-password", "10.1.0.9"))
    _assert_429(_token_request(srv, user, "wrong", "10.1.0.10"))
    # another user is not affected
    other = _name("other")
    srv.add_user(other, "pw-other")
    assert _token_request(srv, other, "pw-other", "10.1.0.11").status_code == 201
    time.sleep(retry)
    assert _token_request(srv, user, "right-password", "10.1.0.12").status_code == 201
    # the success reset the user's count: three free failures again
    for i in range(3):
        assert _token_request(srv, user, "wrong", "10.1.0.13").status_code == 401, i
    _assert_429(_token_request(srv, user, "wrong", "10.1.0.14"))


def test_password_guesses_per_address_are_delayed(throttled: Any) -> None:
    srv = throttled
    address = f"10.2.{uuid.uuid4().int % 250}.1"
    users = [_name("spray") for _ in range(8)]
    for user in users:
        srv.add_user(user, "pw")
    # spraying one guess at many users from one address: 6 free, then 429
    for user in users[:6]:
        assert _token_request(srv, user, "wrong", address).status_code == 401
    _assert_429(_token_request(srv, users[6], "pw", address))
    # another address is not affected; and a user's own success does not clear the address
    assert _token_request(srv, users[6], "pw", "10.3.0.1").status_code == 201
    _assert_429(_token_request(srv, users[7], "pw", address))


def test_forwarded_addresses_count_only_from_trusted_proxies(make_server: Any) -> None:
    """A client that is not a trusted proxy cannot pick the address it is throttled as: with no proxy trusted,
    spoofed X-Forwarded-For values all count as the peer's own address."""
    srv = make_server(forwarded_allow_ips="192.0.2.1", login_throttle_user_free_failures=50,
                      login_throttle_ip_free_failures=3, login_throttle_base_delay_sec=30.0,
                      login_throttle_max_delay_sec=30.0)
    users = [_name("spoof") for _ in range(4)]
    for user in users:
        srv.add_user(user, "pw")
    for i, user in enumerate(users[:3]):
        assert _token_request(srv, user, "wrong", f"10.9.0.{i}").status_code == 401
    _assert_429(_token_request(srv, users[3], "pw", "10.9.0.200"))  # a fresh "address", the same peer


def test_throttling_holds_across_api_processes(throttled: Any, make_server: Any) -> None:
    """A second API process on the same database sees the first one's failures."""
    srv = throttled
    second = make_server(
        database_url=srv.settings.database_url,
        login_throttle_user_free_failures=3,
        login_throttle_ip_free_failures=6,
        login_throttle_base_delay_sec=1.0,
        login_throttle_max_delay_sec=2.0,
    )
    user = _name("multi")
    srv.add_user(user, "pw")
    for i in range(3):
        assert _token_request(srv, user, "wrong", f"10.4.0.{i}").status_code == 401
    _assert_429(_token_request(second, user, "pw", "10.4.0.9"))


def test_tapipy_sees_429_as_an_error_not_a_token(throttled: Any) -> None:
    from tapipy.tapis import Tapis

    srv = throttled
    user = _name("tapipy")
    srv.add_user(user, "pw")
    for i in range(3):
        assert _token_request(srv, user, "wrong", f"10.5.0.{i}").status_code == 401
    t = Tapis(base_url=srv.base_url, username=user, password="pw", tenant_id="default")
    with pytest.raises(Exception) as info:
        t.get_tokens()
    assert "try again" in str(info.value) or "429" in str(info.value)


def test_login_form_is_throttled_too(throttled: Any) -> None:
    srv = throttled
    srv.allow_image(IMAGE)
    owner = _name("formowner")
    pod_id = _name("formpod")
    r = srv.client(owner).post("/v3/pods", json={
        "pod_id": pod_id, "image": f"{IMAGE}:latest", "status_requested": "OFF",
        "networking": {"default": {"protocol": "http", "port": 5000, "tapis_auth": True}}})
    assert r.status_code == 200, r.text
    user = _name("formuser")
    srv.add_user(user, "pw")
    flow = pa.issue_flow(srv.ctx.tokens, "default", pod_id, "/", "0123456789abcdef", "state")
    form = srv.client(headers={"X-Forwarded-For": "10.6.0.1"})
    for _ in range(3):
        wrong = form.post("/v3/oauth2/login", data={"flow": flow, "username": user, "password": "wrong"})
        assert wrong.status_code == 401, wrong.text
    limited = form.post("/v3/oauth2/login", data={"flow": flow, "username": user, "password": "pw"})
    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("text/html")
    assert int(limited.headers["retry-after"]) >= 1
    assert "action=" not in limited.text.replace('<form method="post">', "")  # no code page
    # the API's token endpoint shares the count
    _assert_429(_token_request(srv, user, "pw", "10.6.0.2"))


# ------------------------------------------------------------------------------------------------ revocation


def test_logout_revokes_the_presented_token_only_or_all(server: Any) -> None:
    user = _name("logout")
    first, second = server.token(user), server.token(user)
    assert server.client(token=first).get("/v3/pods").status_code == 200
    r = server.client(token=first).post("/v3/oauth2/logout")
    assert r.status_code == 200, r.text
    assert server.client(token=first).get("/v3/pods").status_code == 401
    assert server.client(token=second).get("/v3/pods").status_code == 200
    r = server.client(token=second).post("/v3/oauth2/logout", params={"all": "true"})
    assert r.status_code == 200, r.text
    assert server.client(token=second).get("/v3/pods").status_code == 401
    # tokens issued afterwards work (even within the same second)
    assert server.client(token=server.token(user)).get("/v3/pods").status_code == 200
    # one user's logout is nobody else's
    assert server.client(_name("bystander")).get("/v3/pods").status_code == 200


def test_password_change_through_the_api_revokes_earlier_tokens(server: Any) -> None:
    user = _name("pwchange")
    server.add_user(user, "old-password")
    old = _token_request(server, user, "old-password", "10.7.0.1").json()["result"]["access_token"]["access_token"]
    client = server.client(token=old)
    assert client.post("/v3/oauth2/password", json={"old_password": "nope", "new_password": "new-password"}
                       ).status_code == 401
    r = client.post("/v3/oauth2/password", json={"old_password": "old-password", "new_password": "new-password"})
    assert r.status_code == 200, r.text
    fresh = r.json()["result"]["access_token"]["access_token"]
    assert server.client(token=old).get("/v3/pods").status_code == 401
    assert server.client(token=fresh).get("/v3/pods").status_code == 200
    assert _token_request(server, user, "old-password", "10.7.0.2").status_code == 401
    assert _token_request(server, user, "new-password", "10.7.0.3").status_code == 201
    # a user of an external issuer (no password here) cannot use it
    outsider = server.client(_name("external"))
    assert outsider.post("/v3/oauth2/password", json={"old_password": "x", "new_password": "12345678"}
                         ).status_code == 400


def _cli(server: Any, *args: str) -> None:
    env = {"OPENPODS_DATABASE_URL": server.settings.database_url}
    result = CliRunner().invoke(cli_app, [*args, "--data-dir", str(server.settings.data_dir)], env=env)
    assert result.exit_code == 0, result.output


def test_cli_password_reset_and_revoke_end_earlier_tokens(server: Any) -> None:
    user = _name("clirevoke")
    server.add_user(user, "first-password")
    before = server.token(user)
    _cli(server, "users", "add", user, "--password", "second-password")
    assert server.client(token=before).get("/v3/pods").status_code == 401
    after = server.token(user)
    assert server.client(token=after).get("/v3/pods").status_code == 200
    # revoke works for any user name (also one of an external issuer)
    _cli(server, "users", "revoke", user)
    # Another process revoked it: the server's cache of verified tokens forgets it within token_cache_sec.
    deadline = time.monotonic() + server.settings.token_cache_sec + 30
    while server.client(token=after).get("/v3/pods").status_code != 401:
        assert time.monotonic() < deadline, "a revoked token still works after token_cache_sec"
        time.sleep(0.2)
    assert server.client(token=server.token(user)).get("/v3/pods").status_code == 200


def test_login_flow_credentials_are_not_api_tokens(server: Any) -> None:
    tokens = server.ctx.tokens
    session = pa.issue_session(tokens, "default", "somepod", "somepod.pods.localhost", "alice", 600)
    flow = pa.issue_flow(tokens, "default", "somepod", "/", "0123456789abcdef", "state")
    code = pa.issue_code(tokens, pa.verify_flow(tokens, flow), "alice")
    for credential in (session, flow, code):
        r = server.client(token=credential).get("/v3/pods")
        assert r.status_code == 401, r.text


def test_forward_auth_without_the_proxy_signature_answers_404_for_every_pod(server: Any) -> None:
    server.allow_image(IMAGE)
    owner = server.client(_name("enumowner"))
    pod_id = _name("enumpod")
    r = owner.post("/v3/pods", json={"pod_id": pod_id, "image": f"{IMAGE}:latest", "status_requested": "OFF",
                                      "networking": {"default": {"protocol": "http", "port": 5000,
                                                                 "tapis_auth": True}}})
    assert r.status_code == 200, r.text
    missing = _name("nopod")
    for client in (server.client(), server.client(_name("stranger"))):
        a = client.get(f"/v3/pods/{pod_id}/auth", params={"tenant": "default"})
        b = client.get(f"/v3/pods/{missing}/auth", params={"tenant": "default"})
        assert (a.status_code, a.text.replace(pod_id, "X")) == (b.status_code, b.text.replace(missing, "X"))
        assert a.status_code == 404
        bad_sig = client.get(f"/v3/pods/{pod_id}/auth", params={"tenant": "default", "sig": "0" * 32})
        assert bad_sig.status_code == 404
    signed = server.client().get(f"/v3/pods/{pod_id}/auth", params={
        "tenant": "default", "sig": pa.stanza_signature(server.ctx.proxy_secret, "default", pod_id)})
    assert signed.status_code == 401  # the proxy's call: no token → 401


# ------------------------------------------------------------------------------------------------ jupyter


def test_jupyter_pod_ids_are_reserved_for_their_user(server: Any) -> None:
    server.allow_image(IMAGE)
    alice, bob = _name("jalice"), _name("jbob")
    squat = server.client(bob).post("/v3/pods", json={
        "pod_id": jupyter_pod_id(alice), "image": f"{IMAGE}:latest", "status_requested": "OFF"})
    assert squat.status_code == 400, squat.text
    assert "reserved" in squat.text
    assert server.count(Pod, pod_id=jupyter_pod_id(alice)) == 0
    # any id ending in 'jupyter' that is not the caller's own
    assert server.client(bob).post("/v3/pods", json={
        "pod_id": "teamjupyter", "image": f"{IMAGE}:latest", "status_requested": "OFF"}).status_code == 400
    own = server.client(alice).post("/v3/pods", json={
        "pod_id": jupyter_pod_id(alice), "image": f"{IMAGE}:latest", "status_requested": "OFF"})
    assert own.status_code == 200, own.text
    # ids never collide between users whose names clean up alike
    assert jupyter_pod_id("a.b") != jupyter_pod_id("ab") == "abjupyter"
    assert jupyter_pod_id("Ab") != jupyter_pod_id("ab")
    for name in ("a.b", "Ab", "9lives", "x" * 120, "ü"):
        pid = jupyter_pod_id(name)
        assert pid[0].isalpha() and pid.isalnum() and pid.islower() and 3 <= len(pid) <= 64, pid


@pytest.fixture(scope="module")
def jupyter_template(server: Any) -> str:
    server.allow_image(IMAGE)
    admin = server.client("admin")
    r = admin.post("/v3/pods/templates", json={"template_id": "jupyterlab"})
    assert r.status_code in (200, 409), r.text
    r = admin.post("/v3/pods/templates/jupyterlab/tags", json={
        "tag": "latest", "commit_message": "test jupyter",
        "pod_definition": {"image": f"{IMAGE}:latest", "networking": {"default": {"protocol": "http", "port": 5000}}}})
    assert r.status_code == 200, r.text
    return "jupyterlab"


def _grant_template(server: Any, user: str) -> None:
    r = server.client("admin").post("/v3/pods/templates/jupyterlab/permissions", json={"user": user, "level": "READ"})
    assert r.status_code == 200, r.text


def test_ensure_never_hands_out_a_pod_made_by_someone_else(server: Any, jupyter_template: str) -> None:
    alice, bob = _name("ealice"), _name("ebob")
    _grant_template(server, alice)
    _grant_template(server, bob)
    # A squatted pod from before ids were reserved: bob's pod under alice's id, shared with alice as ADMIN.
    staged = _name("staged")
    r = server.client(bob).post("/v3/pods", json={"pod_id": staged, "template": "jupyterlab",
                                                  "status_requested": "OFF"})
    assert r.status_code == 200, r.text
    target = jupyter_pod_id(alice)
    with server.session() as s, s.begin():
        for model in (Pod, Permission, ActionLog):
            column = model.pod_id if model is Pod else model.object_id
            s.query(model).filter(column == staged).update({column: target}, synchronize_session=False)
        s.add(Permission(object_type="pod", tenant_id="default", object_id=target, username=alice, level="ADMIN"))
    r = server.client(alice).get("/v3/pods/jupyter/ensure")
    assert r.status_code == 409, r.text
    assert "not your Jupyter pod" in r.json()["message"]
    # bob's own one is made and then found again
    first = server.client(bob).get("/v3/pods/jupyter/ensure")
    assert first.status_code == 200, first.text
    assert first.json()["result"]["created"] is True
    again = server.client(bob).get("/v3/pods/jupyter/ensure")
    assert again.status_code == 200 and again.json()["result"]["created"] is False


def test_upload_to_jupyter_needs_admin_and_a_jupyter_pod(server: Any, jupyter_template: str) -> None:
    owner, helper = _name("uowner"), _name("uhelper")
    _grant_template(server, owner)
    plain = _name("plain")
    r = server.client(owner).post("/v3/pods", json={"pod_id": plain, "image": f"{IMAGE}:latest",
                                                    "status_requested": "OFF"})
    assert r.status_code == 200, r.text
    jpod = jupyter_pod_id(owner)
    assert server.client(owner).get("/v3/pods/jupyter/ensure").status_code == 200
    for pod_id in (plain, jpod):
        r = server.client(owner).post(f"/v3/pods/{pod_id}/permissions", json={"user": helper, "level": "USER"})
        assert r.status_code == 200, r.text
    files = {"file": ("a.txt", b"hello")}
    # USER is not enough (upload_to_pod needs ADMIN)
    for pod_id in (plain, jpod):
        r = server.client(helper).post(f"/v3/pods/jupyter/{pod_id}/upload", files=files, data={"path": "a.txt"})
        assert r.status_code == 403, r.text
    # ADMIN, but not a Jupyter pod
    r = server.client(owner).post(f"/v3/pods/jupyter/{plain}/upload", files=files, data={"path": "a.txt"})
    assert r.status_code == 400, r.text
    assert "not a Jupyter pod" in r.text
    # a stranger learns nothing
    r = server.client(_name("stranger")).post(f"/v3/pods/jupyter/{jpod}/upload", files=files)
    assert r.status_code == 404
    # the owner's Jupyter pod: allowed, but it is not running here (no runtime) → 409, not 403/400
    r = server.client(owner).post(f"/v3/pods/jupyter/{jpod}/upload", files=files, data={"path": "../x"})
    assert r.status_code == 409, r.text
    assert math.isfinite(1.0)
