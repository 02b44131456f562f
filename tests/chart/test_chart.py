"""The Helm chart (charts/openpods), rendered and linted by the real Helm engine (helm-python-sdk: Helm's Go
SDK, no helm binary, no cluster), every rendered object validated with kubernetes-validate (strict) for the
Kubernetes versions we support, and the rendered configuration read back by OpenPods' own Settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from openpods.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s_support"))
import k8s_schemas

from openpods.domain.k8s_manifests import SUPPORTED_KUBERNETES_VERSIONS

CHART = Path(__file__).resolve().parents[2] / "charts" / "openpods"
REQUIRED = {"postgresql": {"url": "postgresql+psycopg://openpods:pw@db.example.org:5432/openpods"},
            "rabbitmq": {"url": "amqp://openpods:pw@mq.example.org:5672/"}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": REQUIRED,
    "nfs-acme-nonroot-gpus": {
        **REQUIRED, "storage": {"nfs": {"server": "nfs.example.org", "path": "/exports/openpods"}},
        "pods": {"namespace": "user-pods", "runAsNonRoot": True, "runAsUser": 1000, "gpus": True,
                 "runtimeClass": "nvidia"},
        "traefik": {"acme": {"email": "ops@example.org"}, "service": {"type": "ClusterIP"}},
        "site": {"domain": "pods.example.edu", "baseUrl": "https://openpods.example.edu"},
        "extraEnv": {"OPENPODS_CPU_MAX": "8000"},
    },
    "existing-secrets-and-claim": {
        "postgresql": {"existingSecret": "db-creds", "existingSecretKey": "url"},
        "rabbitmq": {"existingSecret": "mq-creds", "existingSecretKey": "url"},
        "storage": {"existingClaim": "shared-rwx"},
        "traefik": {"tls": {"existingSecret": "wildcard-cert"}},
        "secrets": {"adminPassword": "chosen-admin-pw", "proxySecret": "chosen-proxy-secret"},
    },
}


def render(values: dict[str, Any], namespace: str = "openpods") -> list[dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values, name="op", namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, [(d["kind"], d["metadata"]["name"]) for d in docs])
    return matches[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_lints_clean(variant: str) -> None:
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace="openpods")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_validate_for_supported_versions(variant: str) -> None:
    docs = render(VARIANTS[variant])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds  # nothing cluster-wide
    # Versions newer than the installed schemas (kubernetes-validate 1.33.1 under tapipy's jsonschema pin) are
    # validated against the newest schemas it has; every object uses GA APIs only.
    for version in k8s_schemas.schema_versions(SUPPORTED_KUBERNETES_VERSIONS):
        for doc in docs:
            k8s_schemas.validate(doc, version)


def settings_from(docs: list[dict[str, Any]], secret_env: dict[str, str] | None = None) -> Settings:
    env = dict(find(docs, "ConfigMap", "op-openpods-config")["data"])
    env.update(secret_env or {})
    fields = {name.upper() for name in Settings.model_fields}
    unknown = [k for k in env if k.removeprefix("OPENPODS_") not in fields]
    assert unknown == [], f"the chart sets settings OpenPods does not have: {unknown}"
    kwargs: dict[str, Any] = {}
    for key, value in env.items():
        name = key.removeprefix("OPENPODS_").lower()
        kwargs[name] = yaml.safe_load(value) if name in ("kubernetes_proxy_pod_labels",) else value
    return Settings(**kwargs)


def test_roles_config_and_proxy_fit_together() -> None:
    docs = render(REQUIRED)
    settings = settings_from(docs)
    assert settings.runtime == "kubernetes" and settings.bus == "rabbitmq" and not settings.proxy_enabled
    assert settings.kubernetes_namespace == "openpods"
    for role in ("api", "spawner", "health"):
        dep = find(docs, "Deployment", f"op-openpods-{role}")
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["command"] == ["openpods", role]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
        assert env["OPENPODS_DATABASE_URL"] == {"name": "op-openpods-secrets", "key": "database-url"}
        # the shared claim is mounted at the data dir, as the runtime's sub-paths assume
        assert {"name": "data", "mountPath": str(settings.data_dir)} in c["volumeMounts"]
        claim = next(v for v in pod["volumes"] if v["name"] == "data")["persistentVolumeClaim"]["claimName"]
        assert claim == settings.kubernetes_storage_pvc == "op-openpods-storage"
        assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    find(docs, "PersistentVolumeClaim", "op-openpods-storage")

    # Traefik: its pods carry the labels each pod's NetworkPolicy admits. By default a routes-sync container
    # long-polls the API Service and writes the routes (and the static API router) where Traefik's file
    # provider watches; no HTTP provider.
    traefik = find(docs, "Deployment", "op-openpods-traefik")
    labels = traefik["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in settings.kubernetes_proxy_pod_labels.items())
    assert settings.kubernetes_proxy_namespace == "openpods"
    api_svc = find(docs, "Service", "op-openpods-api")
    endpoint = f"http://{api_svc['metadata']['name']}.openpods.svc:{api_svc['spec']['ports'][0]['port']}"
    assert settings.proxy_api_url == endpoint
    proxy_pod = traefik["spec"]["template"]["spec"]
    traefik_c, sync_c = proxy_pod["containers"]
    assert "--providers.file.directory=/etc/traefik/dynamic" in traefik_c["args"]
    assert not [a for a in traefik_c["args"] if a.startswith("--providers.http")]
    assert sync_c["command"][:2] == ["openpods", "routes-sync"]
    out = sync_c["command"][sync_c["command"].index("--out") + 1]
    include = sync_c["command"][sync_c["command"].index("--include") + 1]
    mounts = {m["name"]: m for m in sync_c["volumeMounts"]}
    assert not mounts["dynamic"].get("readOnly") and mounts["static"]["mountPath"] == include
    # Traefik sees the sub-directory the routes file is written to (the staging files stay outside it).
    seen = next(m for m in traefik_c["volumeMounts"] if m["name"] == "dynamic")
    assert seen["mountPath"] == "/etc/traefik/dynamic" and seen["readOnly"]
    assert out == f"{mounts['dynamic']['mountPath']}/{seen['subPath']}/pods.yml"
    volumes = {v["name"]: v for v in proxy_pod["volumes"]}
    assert "emptyDir" in volumes["dynamic"]
    assert volumes["static"]["configMap"]["name"] == "op-openpods-traefik-dynamic"
    sync_env = {e["name"]: e for e in sync_c["env"]}
    assert sync_env["OPENPODS_PROXY_API_URL"]["value"] == endpoint
    assert sync_env["OPENPODS_PROXY_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "op-openpods-secrets",
                                                                             "key": "proxy-secret"}
    # routes: poll is Traefik's HTTP provider, as before.
    polled = find(render({**REQUIRED, "traefik": {"routes": "poll"}}), "Deployment", "op-openpods-traefik")
    (only,) = polled["spec"]["template"]["spec"]["containers"]
    assert f"--providers.http.endpoint={endpoint}/traefik-config" in only["args"]
    assert "--providers.http.headers.X-OpenPods-Proxy-Secret=$(PROXY_SECRET)" in only["args"]

    # Only Traefik reaches the API, so the API believes the client address Traefik forwards (login throttle).
    assert settings.forwarded_allow_ips == "*"
    policy = find(docs, "NetworkPolicy", "op-openpods-api")
    assert policy["spec"]["podSelector"]["matchLabels"] == find(docs, "Deployment", "op-openpods-api")[
        "spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [labels]
    # Without the policy (or without the chart's Traefik) no peer is believed.
    for off in ({"api": {"networkPolicy": {"enabled": False}}}, {"traefik": {"enabled": False}}):
        off_docs = render({**REQUIRED, **off})
        assert settings_from(off_docs).forwarded_allow_ips == "127.0.0.1"
        assert not [d for d in off_docs if d["kind"] == "NetworkPolicy"]

    # RBAC: exactly what the runtime does, in the pods' namespace
    role = find(docs, "Role", "op-openpods-pods")
    assert role["metadata"]["namespace"] == "openpods"
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "pods/log", "pods/exec", "services", "secrets", "networkpolicies"}
    binding = find(docs, "RoleBinding", "op-openpods-pods")
    assert binding["subjects"][0]["name"] == find(docs, "ServiceAccount", "op-openpods")["metadata"]["name"]
    for role_name in ("api", "spawner", "health"):
        assert find(docs, "Deployment", f"op-openpods-{role_name}")["spec"]["template"]["spec"][
            "serviceAccountName"] == "op-openpods"


def test_variant_settings() -> None:
    docs = render(VARIANTS["nfs-acme-nonroot-gpus"])
    settings = settings_from(docs)
    assert (settings.kubernetes_storage_nfs_server, settings.kubernetes_storage_nfs_path) == (
        "nfs.example.org", "/exports/openpods")
    assert settings.kubernetes_storage_pvc == ""
    assert settings.kubernetes_namespace == "user-pods" and settings.kubernetes_run_as_non_root
    assert settings.kubernetes_gpus and settings.kubernetes_runtime_class == "nvidia"
    assert settings.cpu_max == 8000 and settings.acme_email == "ops@example.org"
    assert find(docs, "Role", "op-openpods-pods")["metadata"]["namespace"] == "user-pods"
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    api = find(docs, "ConfigMap", "op-openpods-traefik-dynamic")["data"]["api.yaml"]
    assert "Host(`openpods.example.edu`)" in api and "certResolver: acme" in api


def test_existing_secrets_and_generated_ones() -> None:
    docs = render(VARIANTS["existing-secrets-and-claim"])
    c = find(docs, "Deployment", "op-openpods-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env["OPENPODS_DATABASE_URL"] == {"name": "db-creds", "key": "url"}
    assert env["OPENPODS_RABBITMQ_URL"] == {"name": "mq-creds", "key": "url"}
    assert settings_from(docs).kubernetes_storage_pvc == "shared-rwx"
    secret = find(docs, "Secret", "op-openpods-secrets")
    import base64

    assert base64.b64decode(secret["data"]["admin-password"]).decode() == "chosen-admin-pw"
    assert "database-url" not in secret["data"]
    generated = find(render(REQUIRED), "Secret", "op-openpods-secrets")["data"]
    assert len(base64.b64decode(generated["proxy-secret"])) == 40


@pytest.mark.parametrize("values, message", [
    ({"rabbitmq": REQUIRED["rabbitmq"]}, "postgresql.url"),
    ({"postgresql": REQUIRED["postgresql"]}, "rabbitmq.url"),
    ({**REQUIRED, "pods": {"namespace": "elsewhere"}}, "pods.namespace"),
    ({**REQUIRED, "api": {"replicas": "two"}}, "replicas"),  # values.schema.json
    ({**REQUIRED, "pods": {"imagePullPolicy": "Sometimes"}}, "imagePullPolicy"),
    ({**REQUIRED, "extraEnv": {"CPU_MAX": "8000"}}, "OPENPODS_"),
    ({**REQUIRED, "traefik": {"routes": "push"}}, "routes"),
])
def test_missing_or_inconsistent_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.")):
        render(values)


def test_data_dir_on_a_mounted_claim_the_process_does_not_own(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart mounts the claim at the data dir and runs as uid 10001 with fsGroup: the volume is writable
    but owned by root, so chmod 0700 fails with EPERM. Startup must go on (it used to crash)."""
    import os

    from openpods.bootstrap import build_context

    real_chmod = os.chmod
    data = tmp_path / "data"

    def chmod(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        if Path(path) == data:
            raise PermissionError(1, "Operation not permitted", str(path))
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    ctx = build_context(Settings(data_dir=data, runtime="none"))
    try:
        assert ctx.installation_id
    finally:
        ctx.engine.dispose()


def test_shared_keys_come_from_the_release_secret_and_existing_ones_win(tmp_path: Path) -> None:
    """Replicas starting together on a fresh claim must not each make their own signing/encryption keys: the
    init container copies the release Secret's keys where missing (run here with a real sh), and OpenPods
    then uses them; an installation that already has keys keeps them."""
    import base64
    import subprocess

    from cryptography.fernet import Fernet

    from openpods.bootstrap import build_context

    docs = render(REQUIRED)
    secret = find(docs, "Secret", "op-openpods-secrets")["data"]
    keys_src = tmp_path / "secret"
    keys_src.mkdir()
    for name in ("jwt-signing-key.pem", "secrets.key"):
        (keys_src / name).write_bytes(base64.b64decode(secret[name]))
    Fernet((keys_src / "secrets.key").read_text().encode())  # a valid Fernet key
    pod = find(docs, "Deployment", "op-openpods-api")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    script = init["command"][2].replace("cp /keys/", f"cp {keys_src}/").replace("/data", str(tmp_path / "data"))
    for _ in range(2):  # a second replica (or a restart) changes nothing
        subprocess.run(["sh", "-c", script], check=True)
    keys = tmp_path / "data" / "keys"
    assert (keys / "secrets.key").read_bytes() == (keys_src / "secrets.key").read_bytes()

    contexts = [build_context(Settings(data_dir=tmp_path / "data", runtime="none",
                                       database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")) for _ in range(2)]
    try:
        a, b = contexts
        assert b.secrets.decrypt(a.secrets.encrypt("pod credential")) == "pod credential"
        token = a.tokens.issue("default", "admin")["access_token"]
        assert b.tokens.verify(token) is not None
    finally:
        for ctx in contexts:
            ctx.engine.dispose()

    # keys already on the claim are kept
    (keys / "secrets.key").write_text("existing-key")
    subprocess.run(["sh", "-c", script], check=True)
    assert (keys / "secrets.key").read_text() == "existing-key"
