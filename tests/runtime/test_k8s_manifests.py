"""The pure Kubernetes manifest builders: every object validated with kubernetes-validate (the Kubernetes
OpenAPI schemas, strict: no unknown fields) for every version we support, plus the rules the schemas do not
check (DNS-safe names, labels, security, secrets never in the Pod, storage paths)."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from openpods.domain.container_spec import LABEL_INSTALLATION, MountSpec, build_container_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s_support"))
import k8s_schemas

from openpods.domain.k8s_manifests import (
    LABEL_OBJECT,
    SUPPORTED_KUBERNETES_VERSIONS,
    KubeOptions,
    build_pod_objects,
    dns_label,
    identity_from_metadata,
    object_name,
    service_endpoints,
    split_labels,
    storage_claim_manifest,
    storage_sub_path,
)
from openpods.runtimes.kubernetes import state_from_pod

ROOT = "/var/lib/openpods/storage"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def spec(**kw: Any):
    args: dict[str, Any] = dict(
        tenant_id="tacc", pod_id="mypod", instance_id="abc123", image="docker.io/library/postgres:16",
        command=["postgres"], arguments=["-c", "ssl=on"], env={"POSTGRES_PASSWORD": "s3cret-value", "A_B": "1"},
        networking={"default": {"protocol": "postgres", "port": 5432}, "metrics": {"protocol": "http", "port": 9187},
                    "inside": {"protocol": "local_only", "port": 6000}},
        resources={"cpu_request": 250, "cpu_limit": 2000, "mem_request": 256, "mem_limit": 3072, "gpus": 1},
        mounts=[MountSpec(f"{ROOT}/tacc/volumes/v1", "/var/lib/postgresql/data"),
                MountSpec(f"{ROOT}/tacc/snapshots/s1/sub", "/snap", read_only=True)],
    )
    args.update(kw)
    s = build_container_spec(**args)
    return type(s)(**{**s.__dict__, "labels": {**s.labels, LABEL_INSTALLATION: "0123456789abcdef"}})


OPTS = KubeOptions(namespace="openpods", storage_root=ROOT, storage_pvc="openpods-storage")


def all_objects(objs) -> list[dict[str, Any]]:
    return [objs.pod, *objs.dependents({"name": objs.name, "uid": str(uuid.uuid4())})]


def test_the_validator_covers_most_supported_versions() -> None:
    """Newer supported versions are checked against the newest schemas installed (kubernetes-validate 1.33.1
    under tapipy's jsonschema pin); the core of the range must be there."""
    from kubernetes_validate.utils import latest_version

    assert latest_version() >= "1.33"


@pytest.mark.parametrize("version", k8s_schemas.schema_versions(SUPPORTED_KUBERNETES_VERSIONS))
@pytest.mark.parametrize("variant", ["full", "minimal", "nonroot-nfs"])
def test_every_manifest_validates_strictly(version: str, variant: str) -> None:
    if variant == "full":
        objs = build_pod_objects(spec(), OPTS)
    elif variant == "minimal":
        objs = build_pod_objects(spec(command=None, arguments=None, env={}, networking={}, resources={}, mounts=[]),
                                 KubeOptions())
    else:
        opts = KubeOptions(namespace="x", run_as_non_root=True, run_as_user=1000, storage_root=ROOT,
                           storage_nfs_server="nfs.example.org", storage_nfs_path="/exports/openpods",
                           runtime_class_name="gvisor", service_account="pods")
        objs = build_pod_objects(spec(), opts)
    manifests = [*all_objects(objs), storage_claim_manifest("openpods-storage", "openpods", size_gib=100, storage_class="nfs-client")]
    for manifest in manifests:
        k8s_schemas.validate(manifest, version)


def test_validation_catches_a_broken_manifest() -> None:
    """The validator is not a no-op: a wrong type or an unknown field fails."""
    pod = build_pod_objects(spec(), OPTS).pod
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = "5432"
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        k8s_schemas.validate(pod, "1.33.0")
    pod = build_pod_objects(spec(), OPTS).pod
    pod["spec"]["containers"][0]["securityContext"]["noNewPrivileges"] = True
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        k8s_schemas.validate(pod, "1.33.0")


def test_pod_security_resources_and_command() -> None:
    pod = build_pod_objects(spec(), OPTS).pod
    podspec = pod["spec"]
    c = podspec["containers"][0]
    assert podspec["restartPolicy"] == "Never"
    assert podspec["automountServiceAccountToken"] is False and podspec["enableServiceLinks"] is False
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "SYS_ADMIN" not in sc["capabilities"]["add"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "runAsNonRoot" not in sc
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                              "limits": {"cpu": "2000m", "memory": "3072Mi", "nvidia.com/gpu": "1"}}
    assert (c["command"], c["args"]) == (["postgres"], ["-c", "ssl=on"])
    nonroot = build_pod_objects(spec(), KubeOptions(storage_root=ROOT, storage_pvc="c", run_as_non_root=True,
                                                    run_as_user=1000)).pod
    nsc = nonroot["spec"]["containers"][0]["securityContext"]
    assert nsc["runAsNonRoot"] is True and nsc["runAsUser"] == 1000 and "add" not in nsc["capabilities"]
    # args without a command keep the image's entrypoint
    only_args = build_pod_objects(spec(command=None, arguments=["--flag"]), OPTS).pod["spec"]["containers"][0]
    assert "command" not in only_args and only_args["args"] == ["--flag"]


def test_secrets_live_only_in_the_secret() -> None:
    objs = build_pod_objects(spec(), OPTS)
    assert "s3cret-value" not in repr(objs.pod) and "s3cret-value" not in repr(objs.service)
    assert objs.secret is not None and objs.secret["stringData"]["POSTGRES_PASSWORD"] == "s3cret-value"
    assert objs.pod["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": objs.name}}]
    with pytest.raises(ValueError, match="not valid on Kubernetes"):
        build_pod_objects(spec(env={"BAD NAME": "x"}), OPTS)


def test_service_network_policy_and_endpoints() -> None:
    objs = build_pod_objects(spec(), OPTS)
    svc = objs.service
    assert svc is not None
    assert svc["spec"]["selector"] == {LABEL_OBJECT: objs.name}
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [5432, 9187]  # local_only is not exposed
    assert objs.pod["metadata"]["labels"][LABEL_OBJECT] == objs.name
    pol = objs.network_policy["spec"]
    assert pol["podSelector"] == {"matchLabels": {LABEL_OBJECT: objs.name}}
    assert pol["policyTypes"] == ["Ingress"]
    assert pol["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "proxy"}}}],
                               "ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 9187}]}]
    # nothing published: no Service, and a policy that admits nobody
    quiet = build_pod_objects(spec(networking={"x": {"protocol": "local_only", "port": 1}}), OPTS)
    assert quiet.service is None and quiet.network_policy["spec"]["ingress"] == []
    labels = identity_from_metadata(objs.pod["metadata"])
    assert service_endpoints(objs.name, "openpods", labels) == {
        "default": f"{objs.name}.openpods.svc:5432", "metrics": f"{objs.name}.openpods.svc:9187"}


def test_dependents_are_owned_by_the_pod() -> None:
    objs = build_pod_objects(spec(), OPTS)
    for dep in objs.dependents({"name": objs.name, "uid": "u-1"}):
        assert dep["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": objs.name,
                                                       "uid": "u-1", "controller": False,
                                                       "blockOwnerDeletion": False}]
        assert dep["metadata"]["name"] == objs.name and dep["metadata"]["namespace"] == "openpods"
    assert "ownerReferences" not in objs.pod["metadata"]


def test_names_are_deterministic_dns_labels() -> None:
    short = object_name("openpods-tacc-mypod", "0123456789abcdef")
    assert short == "openpods-tacc-mypod-01234567"
    assert object_name("openpods-tacc-mypod", "0123456789abcdef") == short  # deterministic
    long_a = object_name("openpods-" + "t" * 40 + "-" + "p" * 60, "0123456789abcdef")
    long_b = object_name("openpods-" + "t" * 40 + "-" + "p" * 59 + "q", "0123456789abcdef")
    for name in (short, long_a, long_b, dns_label("UPPER_case.dots"), dns_label("9starts-with-digit"),
                 dns_label("-x-"), dns_label("a" * 200)):
        assert DNS_LABEL.match(name) and len(name) <= 63, name
    assert long_a != long_b  # the hash keeps long names apart
    assert dns_label(long_a) == long_a  # idempotent
    assert object_name("openpods-a-b", "") == "openpods-a-b"
    # the identity labels are labels (selectable), the container name is an annotation
    objs = build_pod_objects(spec(), OPTS)
    meta = objs.pod["metadata"]
    assert {"openpods.managed", "openpods.tenant", "openpods.pod_id", "openpods.instance",
            "openpods.installation"} <= set(meta["labels"])
    assert meta["annotations"]["openpods.container-name"] == "openpods-tacc-mypod"


def test_label_values_kubernetes_refuses_become_annotations() -> None:
    good, rest = split_labels({"openpods.instance": "abc", "openpods.port.my_stanza": "80", "x": "a" * 64,
                               "openpods.note": "has space", "bad key!": "v", "ex.com/ok": "v"})
    assert good == {"openpods.instance": "abc", "openpods.port.my_stanza": "80", "ex.com/ok": "v"}
    assert set(rest) == {"x", "openpods.note", "bad key!"}


def test_storage_sub_paths_keep_the_path_safety_rules() -> None:
    assert storage_sub_path(f"{ROOT}/tacc/volumes/v1", ROOT) == "tacc/volumes/v1"
    assert storage_sub_path(f"{ROOT}/tacc/volumes/v1/a/b", ROOT + "/") == "tacc/volumes/v1/a/b"
    for bad in (ROOT, f"{ROOT}/../etc", "/etc/passwd", f"{ROOT}/tacc/../../x", f"{ROOT}x/y", f"{ROOT}/a//b",
                f"{ROOT}/a/./b", "relative/path"):
        with pytest.raises(ValueError):
            storage_sub_path(bad, ROOT)
    with pytest.raises(ValueError):
        storage_sub_path(f"{ROOT}/a", "")
    # with a prefix (the data dir holds keys next to storage/): only storage/… may be mounted
    assert storage_sub_path("/data/storage/t/volumes/v", "/data", "storage") == "storage/t/volumes/v"
    for outside in ("/data/keys", "/data/keys/secret", "/data/storage", "/data/storagex/a"):
        with pytest.raises(ValueError):
            storage_sub_path(outside, "/data", "storage")
    mounts = build_pod_objects(spec(), OPTS).pod["spec"]["containers"][0]["volumeMounts"]
    assert mounts == [
        {"name": "storage", "mountPath": "/var/lib/postgresql/data", "subPath": "tacc/volumes/v1", "readOnly": False},
        {"name": "storage", "mountPath": "/snap", "subPath": "tacc/snapshots/s1/sub", "readOnly": True}]
    with pytest.raises(ValueError, match="kubernetes_storage_pvc"):
        build_pod_objects(spec(), KubeOptions(storage_root=ROOT))


def test_state_from_pod_maps_kubelet_states() -> None:
    objs = build_pod_objects(spec(), OPTS)
    base = {"metadata": objs.pod["metadata"]}

    def with_state(state: dict[str, Any], phase: str = "Running") -> Any:
        return state_from_pod({**base, "status": {"phase": phase, "containerStatuses": [
            {"name": "pod", "state": state}]}}, "openpods")

    running = with_state({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    assert running.state == "running" and running.started_at is not None and running.name == "openpods-tacc-mypod"
    assert running.endpoints["default"] == f"{objs.name}.openpods.svc:5432" and running.host_ports == {}
    oom = with_state({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "Failed")
    assert (oom.state, oom.exit_code) == ("exited", 137) and "OOM" in oom.message
    assert with_state({"waiting": {"reason": "ContainerCreating"}}, "Pending").state == "created"
    pull = with_state({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}, "Pending")
    assert pull.state == "unknown" and pull.message.startswith("ImagePullBackOff")
    assert state_from_pod({**base, "status": {"phase": "Pending"}}, "openpods").state == "created"
    gone = state_from_pod({"metadata": {**objs.pod["metadata"], "deletionTimestamp": "x"}}, "openpods")
    assert gone.state == "unknown" and gone.message == "terminating"


def test_network_policy_admits_a_proxy_in_another_namespace() -> None:
    opts = KubeOptions(namespace="user-pods", proxy_namespace="openpods", storage_root=ROOT, storage_pvc="c",
                       proxy_pod_labels={"app.kubernetes.io/component": "proxy", "app.kubernetes.io/instance": "op"})
    [rule] = build_pod_objects(spec(), opts).network_policy["spec"]["ingress"]
    assert rule["from"] == [{
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "proxy", "app.kubernetes.io/instance": "op"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openpods"}}}]
    for version in k8s_schemas.schema_versions(SUPPORTED_KUBERNETES_VERSIONS):
        k8s_schemas.validate(build_pod_objects(spec(), opts).network_policy, version)
