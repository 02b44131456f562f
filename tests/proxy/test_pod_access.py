"""Unit tests of the pod login credentials and the cookie filter (openpods.auth.pod_access)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from openpods.auth import pod_access as pa
from openpods.auth.tokens import AuthError, TokenService
from openpods.config import Settings


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> TokenService:
    return TokenService(Settings(data_dir=Path(tmp_path_factory.mktemp("keys"))))


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        (["a=1; b=2"], "a=1; b=2"),
        (["__Host-openpods-session=x; _xsrf=2|a=b"], "_xsrf=2|a=b"),
        (["X-Tapis-Token=t", "jupyter=1"], "jupyter=1"),
        (["x-tapis-token=t; OPENPODS-foo=1; __host-openpods-state-00=s"], ""),
        (["  a=1 ;; ; __Host-openpods-session=x ; b"], "a=1; b"),
        (["a=openpods; myopenpods=1"], "a=openpods; myopenpods=1"),
        ([], ""),
    ],
)
def test_filter_cookie_header(headers: list[str], kept: str) -> None:
    assert pa.filter_cookie_header(headers) == kept


def test_session_is_bound_to_tenant_pod_and_host(tokens: TokenService) -> None:
    value = pa.issue_session(tokens, "default", "mypod", "mypod.pods.localhost", "alice", 600)
    identity = pa.verify_session(tokens, value, "default", "mypod", "mypod.pods.localhost")
    assert (identity.tenant_id, identity.username, identity.is_admin) == ("default", "alice", False)
    assert identity.jti and identity.issued_at_ms
    for tenant, pod, host in (("other", "mypod", "mypod.pods.localhost"), ("default", "mypod-x", "mypod.pods.localhost"),
                              ("default", "mypod", "evil.pods.localhost"), ("default", "other", "other.pods.localhost")):
        with pytest.raises(AuthError):
            pa.verify_session(tokens, value, tenant, pod, host)
    # not an API token
    with pytest.raises(AuthError):
        tokens.verify(value)


def test_expired_or_foreign_credentials_are_refused(tokens: TokenService, tmp_path: Path) -> None:
    expired = pa.issue_session(tokens, "default", "mypod", "h", "alice", -120)
    with pytest.raises(AuthError):
        pa.verify_session(tokens, expired, "default", "mypod", "h")
    other = TokenService(Settings(data_dir=tmp_path))  # another installation's key
    forged = pa.issue_session(other, "default", "mypod", "h", "alice", 600)
    with pytest.raises(AuthError):
        pa.verify_session(tokens, forged, "default", "mypod", "h")
    # a code is not a session, a session is not a code, a flow is neither
    flow = pa.issue_flow(tokens, "default", "mypod", "/", "0123456789abcdef", "state")
    code = pa.issue_code(tokens, pa.verify_flow(tokens, flow), "alice")
    session = pa.issue_session(tokens, "default", "mypod", "h", "alice", 600)
    with pytest.raises(AuthError):
        pa.verify_session(tokens, code, "default", "mypod", "h")
    with pytest.raises(AuthError):
        pa.verify_code(tokens, session, "default", "mypod")
    with pytest.raises(AuthError):
        pa.verify_code(tokens, flow, "default", "mypod")
    claims = pa.verify_code(tokens, code, "default", "mypod")
    assert claims["st"] == pa.state_hash("state") and claims["sub"] == "alice"
    with pytest.raises(AuthError):
        pa.verify_code(tokens, code, "default", "otherpod")
    unsigned = jwt.encode({**claims}, "k" * 32, algorithm="HS256")
    with pytest.raises(AuthError):
        pa.verify_code(tokens, unsigned, "default", "mypod")


def test_stanza_signature_depends_on_secret_tenant_and_stanza() -> None:
    base = pa.stanza_signature("s", "default", "mypod")
    assert len(base) == 32
    assert base == pa.stanza_signature("s", "default", "mypod")
    assert len({base, pa.stanza_signature("t", "default", "mypod"), pa.stanza_signature("s", "other", "mypod"),
                pa.stanza_signature("s", "default", "mypod-x")}) == 4
