"""Secrets: ``<<tapissecret_…>>`` placeholders are substituted into the container environment, and the values
never appear in logs (even when the container prints them), action logs, exec records or ``derived``."""

from __future__ import annotations

import hashlib
from typing import Any

from openpods.store.tables import ActionLog, PodLog, PodSecret

# A pod that prints its secrets on stdout and stderr, then idles (or fails, for the ERROR case).
PRINT = 'echo "pw=$PW"; echo "svc=$SVC" >&2; echo "user=$USERNAME"; echo "legacy=$LEGACY"'
IDLE = 'trap "exit 0" TERM; while :; do sleep 1; done'
ENV = {
    "PW": "<<tapissecret_user_password>>",
    "SVC": "<<tapissecret_service_password>>",
    "USERNAME": "<<tapissecret_user_username>>",
    "LEGACY": "<<TAPIS_user_password>>",
    "PLAIN": "not a secret",
}


def _credentials(env: Any, pod_id: str) -> dict[str, str]:
    r = env.http.get(f"/v3/pods/{pod_id}/credentials")
    assert r.status_code == 200, r.text
    return r.json()["result"]


def _service_password(env: Any, pod_id: str) -> str:
    from openpods.services.pods import pod_secrets

    with env.srv.session() as s:
        return pod_secrets(s, env.srv.ctx.secrets, env.tenant, pod_id)["service_password"]


def _assert_nowhere(env: Any, pod_id: str, secrets: list[str]) -> None:
    """No secret value in the pod's logs, action logs (API and table), derived view or pod view."""
    logs = env.logs(pod_id)
    rows = env.srv.rows(PodLog, tenant_id=env.tenant, pod_id=pod_id)
    actions = env.srv.rows(ActionLog, tenant_id=env.tenant, object_id=pod_id)
    derived = env.http.get(f"/v3/pods/{pod_id}/derived")
    assert derived.status_code == 200, derived.text
    pod = env.http.get(f"/v3/pods/{pod_id}")
    for secret in secrets:
        assert secret not in logs["logs"]
        assert not any(secret in line for line in logs["action_logs"])
        assert not any(secret in row["logs"] for row in rows)
        assert not any(secret in row["message"] for row in actions)
        assert secret not in derived.text
        assert secret not in pod.text
    # derived shows the placeholders as written.
    assert derived.json()["result"]["environment_variables"]["PW"] == "<<tapissecret_user_password>>"


def test_secrets_are_substituted_in_the_container_only(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("secret")
    env.create(pod_id, "busybox", environment_variables=ENV, command=["sh", "-c", f"{PRINT}; {IDLE}"])
    env.wait_status(pod_id, "AVAILABLE")
    creds = _credentials(env, pod_id)
    password, username = creds["user_password"], creds["user_username"]
    service_password = _service_password(env, pod_id)
    assert len(password) >= 16 and len(service_password) >= 16
    secrets = [password, service_password]

    # Substituted inside the container: compare digests computed in the container (not secret themselves).
    digest = env.exec_ok(
        pod_id,
        [
            "sh",
            "-c",
            'printf %s "$PW" | sha256sum; printf %s "$SVC" | sha256sum; printf %s "$LEGACY" | sha256sum',
        ],
    )
    assert digest["stdout"].split()[0::2] == [
        hashlib.sha256(v.encode()).hexdigest() for v in (password, service_password, password)
    ]
    # exec `env`: the values are there, the exec record shows them redacted.
    result = env.exec_ok(pod_id, ["env"])
    assert "PW=********" in result["stdout"]
    assert "SVC=********" in result["stdout"]
    assert f"USERNAME={username}" in result["stdout"]
    assert "PLAIN=not a secret" in result["stdout"]
    assert "tapissecret" not in result["stdout"]
    for secret in secrets:
        assert (
            secret not in result["stdout"]
            and secret not in result["stderr"]
            and secret not in result["command"]
        )
    # The engine has the real value (that is where it must be), but not in labels.
    [info] = env.containers(pod_id)
    container_env = env.engine.inspect(info.id)["Config"]["Env"]
    assert f"PW={password}" in container_env
    assert not any(password in value for value in info.labels.values())

    # The container printed its secrets: the stored and served logs are redacted.
    logs = env.logs(pod_id)["logs"]
    assert "pw=********" in logs, logs
    assert "svc=********" in logs
    assert f"user={username}" in logs
    _assert_nowhere(env, pod_id, secrets)

    # Encrypted at rest.
    [row] = env.srv.rows(PodSecret, tenant_id=env.tenant, pod_id=pod_id)
    assert password not in row["user_password_enc"] and service_password not in row["service_password_enc"]

    # After a stop, the kept logs are still redacted.
    assert env.action(pod_id, "stop").status_code == 200
    env.wait_status(pod_id, "STOPPED")
    _assert_nowhere(env, pod_id, secrets)


def test_secrets_in_the_logs_of_a_failed_container_are_redacted(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("secfail")
    env.create(pod_id, "busybox", environment_variables=ENV, command=["sh", "-c", f"{PRINT}; exit 1"])
    pod = env.wait_status(pod_id, "ERROR")
    password = _credentials(env, pod_id)["user_password"]
    logs = env.logs(pod_id)["logs"]
    assert "pw=********" in logs, (pod, logs)
    _assert_nowhere(env, pod_id, [password, _service_password(env, pod_id)])


def test_an_unknown_placeholder_is_left_as_written(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("sectypo")
    env.create(pod_id, "busybox", environment_variables={"X": "<<tapissecret_user_pasword>>"})
    env.wait_status(pod_id, "AVAILABLE")
    assert "X=<<tapissecret_user_pasword>>" in env.exec_ok(pod_id, ["env"])["stdout"]
