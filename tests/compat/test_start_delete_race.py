"""DELETE ``/pods/{id}`` right after ``/start`` (issue 10, item 5), against the real spawner and health loop driving
real containers: the controllers update the (versioned) pod row while the API deletes it. The API runs a lost
race again on a fresh read, so every answer is 200 (or a 404 once the pod is gone) — never 500 — and no pod
row or container is left behind.

Request shapes: the original suite's ``client.delete(f"/pods/{pod_id}")`` right after its pod calls
(tapis-project/pods_service ``tests/test_pods.py`` @ 0d0dfe085f5aceeff1f477c77db7a8091b6c827f), and TapisUI's
start and delete buttons (``src/app/Pods/_components/Modals/StartPodModal/StartPodModal.tsx`` @
802f305baba73b32ca0602c6df840968caab6133 and ``DeletePodModal/DeletePodModal.tsx``), which send GET ``/start``
and DELETE with no body.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

from openpods.store.tables import Pod

from .conftest import SMALL, image, wait_until

ROUNDS = 12


def test_delete_right_after_start(module_pod_server: Any) -> None:
    env = module_pod_server
    http = env.srv.client(env.user, timeout=120.0)
    codes: Counter[int] = Counter()
    failures: list[str] = []
    pods = [f"race{uuid.uuid4().hex[:10]}" for _ in range(ROUNDS)]
    for pod_id in pods:
        r = http.post("/v3/pods", json={"pod_id": pod_id, "image": image("busybox"), "resources": SMALL,
                                        "status_requested": "OFF"})
        assert r.status_code == 200, r.text
    for i, pod_id in enumerate(pods):
        # Half the rounds: the delete waits for nothing; the other half: a concurrent update joins in too.
        start = http.get(f"/v3/pods/{pod_id}/start")
        assert start.status_code == 200, start.text
        others: list[threading.Thread] = []
        if i % 2:
            def touch(pid: str = pod_id) -> None:
                r = env.srv.client(env.user).put(f"/v3/pods/{pid}", json={"description": "racing"})
                if r.status_code >= 500:
                    failures.append(f"PUT: {r.status_code} {r.text}")
            others.append(threading.Thread(target=touch))
            others[-1].start()
        r = http.delete(f"/v3/pods/{pod_id}")
        codes[r.status_code] += 1
        if r.status_code != 200:
            failures.append(f"DELETE {pod_id}: {r.status_code} {r.text}")
        for t in others:
            t.join(60)
    assert not failures, failures
    assert codes == Counter({200: ROUNDS})
    for pod_id in pods:
        assert env.srv.count(Pod, tenant_id=env.tenant, pod_id=pod_id) == 0
        wait_until(lambda pid=pod_id: not env.containers(pid), what=f"containers of {pod_id} removed")


def test_delete_while_the_pod_comes_up(module_pod_server: Any) -> None:
    """Create (ON) then delete at once, racing the spawner's first writes; then the same for restart."""
    env = module_pod_server
    http = env.srv.client(env.user, timeout=120.0)
    for verb in ("create", "restart"):
        for _ in range(ROUNDS // 2):
            pod_id = f"race{uuid.uuid4().hex[:10]}"
            r = http.post("/v3/pods", json={"pod_id": pod_id, "image": image("busybox"), "resources": SMALL})
            assert r.status_code == 200, r.text
            if verb == "restart":
                env.wait_status(pod_id, "AVAILABLE")
                assert http.get(f"/v3/pods/{pod_id}/restart").status_code == 200
            r = http.delete(f"/v3/pods/{pod_id}")
            assert r.status_code == 200, r.text
            assert http.get(f"/v3/pods/{pod_id}").status_code == 404
            wait_until(lambda pid=pod_id: not env.containers(pid), what=f"containers of {pod_id} removed")
