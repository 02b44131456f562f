"""The route table (services.proxy.RouteTable): the Traefik config kept up to date incrementally from the
database, off the request path. Runs against SQLite and PostgreSQL (``database_url``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from openpods.bootstrap import build_context
from openpods.config import Settings
from openpods.context import AppContext
from openpods.domain.traefik_config import PodRoutes, render_dynamic_config
from openpods.services.proxy import RouteTable, make_route_table, render_settings
from openpods.store import db
from openpods.store.tables import ActionLog, Pod

SECRET_HEADER = "X-OpenPods-Proxy-Secret"
BASE_TS = datetime(2026, 1, 1)


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Iterator[AppContext]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        runtime="none",
        proxy_enabled=False,
        import_starter_catalog=False,
    )
    context = build_context(settings)
    try:
        yield context
    finally:
        context.engine.dispose()


def stanzas_for(pod_id: str, n: int) -> dict[str, Any]:
    default: dict[str, Any] = {"protocol": "http", "port": 5000, "url": f"{pod_id}.pods.localhost"}
    if n % 3 == 0:
        default["tapis_auth"] = True
    if n % 5 == 0:
        default["cors_allow_origins"] = ["https://ui.example.org"]
    stanzas = {"default": default}
    if n % 4 == 0:
        stanzas["db"] = {"protocol": "postgres", "port": 5432, "url": f"{pod_id}-db.pods.localhost"}
    return stanzas


def add_pod(
    ctx: AppContext,
    pod_id: str,
    n: int = 1,
    *,
    tenant: str = "default",
    status: str = "AVAILABLE",
    routes: Any = None,
) -> None:
    routes = stanzas_for(pod_id, n) if routes is None else routes
    ts = BASE_TS + timedelta(seconds=n)
    with ctx.sessions() as s, s.begin():
        s.add(
            Pod(
                tenant_id=tenant,
                pod_id=pod_id,
                image="img",
                status="AVAILABLE",
                status_requested="ON",
                status_since=ts,
                creation_ts=ts,
                update_ts=ts,
                networking=routes,
                routes=routes,
                host_ports={k: 20000 + n * 4 + i for i, k in enumerate(routes)}
                if isinstance(routes, dict)
                else {},
            )
        )
    if status != "AVAILABLE":
        change(ctx, pod_id, tenant=tenant, status=status)


def change(ctx: AppContext, pod_id: str, *, tenant: str = "default", **values: Any) -> None:
    with ctx.sessions() as s, s.begin():
        pod = s.get(Pod, (tenant, pod_id))
        assert pod is not None
        for name, value in values.items():
            setattr(pod, name, value)


def delete(ctx: AppContext, pod_id: str, tenant: str = "default") -> None:
    with ctx.sessions() as s, s.begin():
        s.delete(s.get(Pod, (tenant, pod_id)))


def config(table: RouteTable) -> dict[str, Any]:
    published = table.response()
    assert published is not None
    return json.loads(published[0])


def full_render(ctx: AppContext) -> Any:
    """What the old, render-everything-on-each-poll endpoint produced for the same rows."""
    with ctx.sessions() as s:
        rows = s.execute(
            select(Pod.tenant_id, Pod.pod_id, Pod.routes, Pod.host_ports)
            .where(Pod.status.in_(("CREATING", "AVAILABLE")), Pod.status_requested == "ON")
            .order_by(Pod.creation_ts, Pod.tenant_id, Pod.pod_id)
        ).all()
    routes = [
        PodRoutes(
            t,
            p,
            r,
            {k: v.get("url", "") for k, v in r.items() if isinstance(v, dict)} if isinstance(r, dict) else {},
            {k: f"127.0.0.1:{port}" for k, port in hp.items()} if isinstance(hp, dict) else {},
        )
        for t, p, r, hp in rows
    ]
    return render_dynamic_config(routes, render_settings(ctx.settings, ctx.proxy_secret))


def objects_of(cfg: dict[str, Any], pod_id: str) -> dict[str, Any]:
    """Every named object of one pod, by section."""
    out: dict[str, Any] = {}
    for top, part in cfg.items():
        for kind, objects in part.items():
            for name, obj in objects.items():
                if f"-{pod_id}-" in name:
                    out[f"{top}.{kind}.{name}"] = obj
    return out


def proxy_logs(ctx: AppContext, pod_id: str) -> list[str]:
    with ctx.sessions() as s:
        return list(
            s.scalars(
                select(ActionLog.message).where(ActionLog.object_id == pod_id, ActionLog.actor == "proxy")
            )
        )


def proxy_errors(ctx: AppContext, pod_id: str, tenant: str = "default") -> list[str]:
    with ctx.sessions() as s:
        pod = s.get(Pod, (tenant, pod_id))
        assert pod is not None
        return list(pod.proxy_errors)


GARBAGE = {
    "default": {
        "protocol": "http",
        "port": 5000,
        "url": "x.pods.localhost",
        "ip_allow_list": ["nope"],
        "cors_max_age": "soon",
    }
}


def test_assembled_config_equals_a_full_render(ctx: AppContext) -> None:
    for n in range(40):
        add_pod(ctx, f"pod{n}", n)
    add_pod(ctx, "broken", 41, routes=GARBAGE)
    add_pod(ctx, "notadict", 42, routes=["not", "a", "dict"])
    add_pod(ctx, "dupe", 43, tenant="other", routes=stanzas_for("pod1", 1))  # pod1's hostname, created later
    table = ctx.proxy_config
    assert table.sync_once()
    expected = full_render(ctx)
    assert config(table) == expected.config
    assert table._last_errors == expected.errors
    assert ("other", "dupe") in expected.errors and ("default", "broken") in expected.errors


def test_many_changes_in_any_order_keep_the_config_equal_to_a_full_render(ctx: AppContext) -> None:
    """Pods created out of order, deleted and changed in the middle of the config order (the table keeps the
    order in chunks; every state must still equal a full render of the rows)."""
    rng = random.Random(7)
    numbers = list(range(700))
    rng.shuffle(numbers)
    with ctx.sessions() as s, s.begin():
        for n in numbers:
            routes = stanzas_for(f"p{n}", n)
            ts = BASE_TS + timedelta(seconds=n)
            s.add(
                Pod(
                    tenant_id="default",
                    pod_id=f"p{n}",
                    image="img",
                    status="AVAILABLE",
                    status_requested="ON",
                    status_since=ts,
                    creation_ts=ts,
                    update_ts=ts,
                    networking=routes,
                    routes=routes,
                    host_ports={k: 20000 + n * 4 + i for i, k in enumerate(routes)},
                )
            )
    table = ctx.proxy_config
    table.sync_once()
    assert config(table) == full_render(ctx).config
    for round_no in range(3):
        victims = rng.sample(sorted(table._entries), 60)
        for _, pod_id in victims[:30]:
            delete(ctx, pod_id)
        for _, pod_id in victims[30:]:
            change(ctx, pod_id, host_ports={"default": 40000 + round_no})
        table.sync_once(keys=victims)
        assert config(table) == full_render(ctx).config
        assert not table.sync_once(force=True)  # a full check finds nothing the targeted sync missed


def test_one_change_rerenders_that_pod_alone(ctx: AppContext) -> None:
    for n in range(50):
        add_pod(ctx, f"pod{n}", n)
    table = ctx.proxy_config
    table.sync_once()
    assert table.rendered_pods == 50
    before = config(table)

    change(ctx, "pod7", host_ports={"default": 31234})
    assert table.sync_once()
    assert table.rendered_pods == 51  # one pod re-rendered, not fifty
    after = config(table)
    assert after == full_render(ctx).config
    assert objects_of(after, "pod7") != objects_of(before, "pod7")
    assert {"url": "http://127.0.0.1:31234"} in after["http"]["services"]["default-pod7-default"][
        "loadBalancer"
    ]["servers"]
    for n in range(50):
        if n != 7:
            assert objects_of(after, f"pod{n}") == objects_of(before, f"pod{n}")


def test_nothing_changed_nothing_rerendered(ctx: AppContext) -> None:
    for n in range(5):
        add_pod(ctx, f"pod{n}", n)
    table = ctx.proxy_config
    table.sync_once()
    first = table.response()
    for _ in range(3):
        assert not table.sync_once()
        assert not table.sync_once(force=True)  # the full check finds no revision changed either
    assert table.rendered_pods == 5
    assert table.response() == first  # same bytes, same ETag


def test_stopped_deleted_and_not_started_pods_disappear(ctx: AppContext) -> None:
    for n in range(6):
        add_pod(ctx, f"pod{n}", n)
    add_pod(ctx, "starting", 7, status="CREATING")  # container started: its port is known, so it routes
    add_pod(ctx, "waiting", 8, status="REQUESTED")
    table = ctx.proxy_config
    table.sync_once()
    cfg = config(table)
    assert objects_of(cfg, "starting") and not objects_of(cfg, "waiting")

    delete(ctx, "pod1")
    change(ctx, "pod2", status_requested="OFF")
    change(ctx, "pod3", status="STOPPED", host_ports={})
    table.sync_once()
    cfg = config(table)
    for gone in ("pod1", "pod2", "pod3"):
        assert not objects_of(cfg, gone), gone
    for kept in ("pod0", "pod4", "pod5", "starting"):
        assert objects_of(cfg, kept), kept
    assert cfg == full_render(ctx).config

    for n in (0, 4, 5):
        delete(ctx, f"pod{n}")
    delete(ctx, "starting")
    table.sync_once()
    assert config(table) == {}


def test_an_invalid_stanza_is_reported_once_and_breaks_nothing_else(ctx: AppContext) -> None:
    for n in range(5):
        add_pod(ctx, f"pod{n}", n)
    table = ctx.proxy_config
    table.sync_once()
    good_before = {n: objects_of(config(table), f"pod{n}") for n in range(5) if n != 2}

    change(ctx, "pod2", routes={**stanzas_for("pod2", 2), "bad": {"protocol": "gopher", "url": 7}})
    table.sync_once()
    cfg = config(table)
    assert objects_of(cfg, "pod2")  # its good stanza still routes
    assert not any("-pod2-bad" in name for name in objects_of(cfg, "pod2"))
    for n, objects in good_before.items():
        assert objects_of(cfg, f"pod{n}") == objects
    # reported by the sync itself (no GET of /traefik-config involved), on that pod only
    assert any("networking.bad" in p for p in proxy_errors(ctx, "pod2"))
    assert len(proxy_logs(ctx, "pod2")) == 1
    for n in (0, 1, 3, 4):
        assert not proxy_errors(ctx, f"pod{n}") and not proxy_logs(ctx, f"pod{n}")
    for _ in range(3):  # more syncs (and the periodic full check) do not repeat the report
        change(ctx, "pod0", description="touched")
        table.sync_once(force=True)
    assert len(proxy_logs(ctx, "pod2")) == 1

    change(ctx, "pod2", routes=stanzas_for("pod2", 2))
    table.sync_once()
    assert proxy_errors(ctx, "pod2") == []


def test_hostname_freed_by_its_owner_goes_to_the_next_claimant(ctx: AppContext) -> None:
    add_pod(
        ctx,
        "first",
        1,
        tenant="default",
        routes={"default": {"protocol": "http", "url": "same.pods.localhost"}},
    )
    add_pod(
        ctx,
        "second",
        2,
        tenant="other",
        routes={"default": {"protocol": "http", "url": "same.pods.localhost"}},
    )
    table = ctx.proxy_config
    table.sync_once()
    assert list(config(table)["http"]["services"]) == ["default-first-default"]
    assert "already routed for default/first" in proxy_errors(ctx, "second", "other")[0]

    delete(ctx, "first")
    table.sync_once()
    assert list(config(table)["http"]["services"]) == ["other-second-default"]
    assert proxy_errors(ctx, "second", "other") == []


def test_a_restarted_process_rebuilds_the_same_routes_from_the_database(
    ctx: AppContext, tmp_path: Path
) -> None:
    """Nothing of the table is persisted but the routes file, which the first sync of a new process rewrites
    completely (atomically: a kill at any moment leaves the old or the new file, never half of one)."""
    for n in range(20):
        add_pod(ctx, f"pod{n}", n)
    add_pod(ctx, "broken", 30, routes=GARBAGE)
    routes_dir = tmp_path / "traefik" / "dynamic"
    path = routes_dir / "pods.yml"
    table = ctx.proxy_config
    table.file_path = path
    table.sync_once()
    assert json.loads(path.read_bytes()) == config(table)
    logs_before = proxy_logs(ctx, "broken")

    # The process dies; meanwhile a pod goes away and one arrives; the file still holds the old routes.
    delete(ctx, "pod3")
    add_pod(ctx, "late", 40)
    reborn = make_route_table(ctx.settings, ctx.sessions, ctx.proxy_secret)
    reborn.file_path = path
    assert reborn.sync_once()
    cfg = json.loads(path.read_bytes())
    assert cfg == config(reborn) == full_render(ctx).config
    assert not objects_of(cfg, "pod3") and objects_of(cfg, "late")
    assert [p.name for p in routes_dir.iterdir()] == ["pods.yml"]  # no temporary file in the watched dir
    # the new process finds the problem already recorded: no second report
    assert proxy_logs(ctx, "broken") == logs_before


@contextlib.contextmanager
def running(table: RouteTable, interval: float = 3600.0) -> Iterator[None]:
    """The table's background task in a loop of its own (an hour between periodic checks by default, so that
    only a wake-up can explain a new route)."""
    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(table.run(interval)))
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: table.running and table.generation >= 1, "the first sync")
        yield
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_committed_pod_change_wakes_the_background_sync(ctx: AppContext) -> None:
    """The background task syncs on every commit that wrote a pod in this process."""
    table = ctx.proxy_config
    with running(table):
        add_pod(ctx, "newpod", 3)
        wait_for(lambda: objects_of(config(table), "newpod"), "the new pod's route")
        change(ctx, "newpod", status_requested="OFF")
        wait_for(lambda: not objects_of(config(table), "newpod"), "the stopped pod's route to go")


def test_a_change_committed_elsewhere_wakes_the_sync_on_postgresql(ctx: AppContext, database_url: str) -> None:
    """Another process's commit (here: another engine, which the table's commit hook does not see) reaches the
    table through the pods' NOTIFY trigger, long before the hourly periodic check."""
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite has one process")
    table = ctx.proxy_config
    other = db.make_engine(database_url)
    elsewhere = SimpleNamespace(sessions=sessionmaker(other))
    try:
        with running(table):
            wait_for(lambda: table.listening, "the LISTEN connection")
            add_pod(elsewhere, "fromafar", 3)  # type: ignore[arg-type]
            wait_for(lambda: objects_of(config(table), "fromafar"), "the route of a pod made elsewhere")
            change(elsewhere, "fromafar", status_requested="OFF")  # type: ignore[arg-type]
            wait_for(lambda: not objects_of(config(table), "fromafar"), "its route to go")
    finally:
        other.dispose()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


# --- the endpoint ----------------------------------------------------------------------------------------


def test_endpoint_serves_published_bytes_with_etag_and_reports_without_polls(make_server: Any) -> None:
    srv = make_server(roles={"api"})
    ctx = srv.ctx
    add_pod(ctx, "fine", 1)
    add_pod(ctx, "broken", 2, routes=GARBAGE)
    # Problems are recorded by the background sync: nobody has fetched /traefik-config yet.
    wait_for(lambda: proxy_errors(ctx, "broken"), "proxy_errors of the broken pod")

    client = srv.client()
    first = client.get("/traefik-config", headers={SECRET_HEADER: ctx.proxy_secret})
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    etag = first.headers["etag"]
    assert objects_of(first.json(), "fine")
    same = client.get("/traefik-config", headers={SECRET_HEADER: ctx.proxy_secret, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    # a wrong secret gets nothing, whatever its If-None-Match
    assert (
        client.get("/traefik-config", headers={SECRET_HEADER: "x", "If-None-Match": etag}).status_code == 401
    )

    # Pollers that accept gzip (Traefik does) get the body compressed once in the background.
    def gzipped() -> Any:
        r = client.get(
            "/traefik-config", headers={SECRET_HEADER: ctx.proxy_secret, "Accept-Encoding": "gzip"}
        )
        return r if r.headers.get("content-encoding") == "gzip" else None

    wait_for(gzipped, "a gzip-encoded answer")
    assert gzipped().json() == first.json()  # httpx decodes it

    add_pod(ctx, "another", 3)
    wait_for(lambda: ctx.proxy_config.response()[1] != etag, "a new config")
    changed = client.get("/traefik-config", headers={SECRET_HEADER: ctx.proxy_secret, "If-None-Match": etag})
    assert changed.status_code == 200 and objects_of(changed.json(), "another")


def test_long_poll_answers_when_the_config_changes_and_304_when_the_wait_runs_out(make_server: Any) -> None:
    srv = make_server(roles={"api"})
    ctx = srv.ctx
    add_pod(ctx, "first", 1)
    wait_for(lambda: objects_of(json.loads(ctx.proxy_config.response()[0]), "first"), "the first pod's route")
    client = srv.client()
    headers = {SECRET_HEADER: ctx.proxy_secret}
    etag = client.get("/traefik-config", headers=headers).headers["etag"]
    # Nothing changes: held for the whole wait, then 304.
    r = client.get("/traefik-config", params={"wait": 0.5}, headers={**headers, "If-None-Match": etag})
    assert r.status_code == 304
    # A change while the poll is held: answered with the new config (a wait of 10 minutes would otherwise
    # outlast the client's timeout below).
    answer: list[Any] = []
    poll = threading.Thread(target=lambda: answer.append(srv.client(timeout=120).get(
        "/traefik-config", params={"wait": 300}, headers={**headers, "If-None-Match": etag})))
    poll.start()
    time.sleep(0.3)
    assert not answer  # held
    add_pod(ctx, "second", 2)
    poll.join(60)
    assert answer and answer[0].status_code == 200
    assert answer[0].headers["etag"] != etag and objects_of(answer[0].json(), "second")
    # An ETag that is not the current one is answered at once; bad waits are a 400 in the envelope.
    assert client.get("/traefik-config", params={"wait": 300},
                      headers={**headers, "If-None-Match": '"old"'}).status_code == 200
    for bad in ("-1", "301", "soon"):
        r = client.get("/traefik-config", params={"wait": bad}, headers={**headers, "If-None-Match": etag})
        assert r.status_code == 400 and r.json()["status"] == "error", (bad, r.text)
    assert client.get("/traefik-config", params={"wait": 1}, headers={SECRET_HEADER: "x", "If-None-Match": etag}
                      ).status_code == 401


def test_routes_sync_writes_each_change_to_the_file(make_server: Any, tmp_path: Path) -> None:
    from openpods.proxy import routes_sync

    srv = make_server(roles={"api"})
    ctx = srv.ctx
    out = tmp_path / "dynamic" / "pods.yml"
    static = tmp_path / "configmap"  # shaped like a mounted ConfigMap
    (static / "..2026_12_01").mkdir(parents=True)
    (static / "..2026_12_01" / "api.yaml").write_text("http: {}\n")
    (static / "..data").symlink_to("..2026_12_01")
    (static / "api.yaml").symlink_to("..data/api.yaml")
    (static / "README").write_text("not a config file")
    stop = threading.Event()
    thread = threading.Thread(target=routes_sync.run, args=(srv.url(""), ctx.proxy_secret, out),
                              kwargs={"wait_sec": 60.0, "stop": stop, "include": static}, daemon=True)
    thread.start()
    try:
        wait_for(out.exists, "the first routes file")
        add_pod(ctx, "synced", 1)
        wait_for(lambda: objects_of(json.loads(out.read_bytes()), "synced"), "the new pod in the file")
        change(ctx, "synced", status_requested="OFF")
        wait_for(lambda: not objects_of(json.loads(out.read_bytes()), "synced"), "the stopped pod to go")
        assert json.loads(out.read_bytes()) == json.loads(ctx.proxy_config.response()[0])
        # the static file copied once; no temporary left behind
        assert sorted(p.name for p in out.parent.iterdir()) == ["api.yaml", "pods.yml"]
        assert (out.parent / "api.yaml").read_text() == "http: {}\n"
    finally:
        stop.set()
        add_pod(ctx, "wake", 2)  # ends the held poll
        thread.join(30)


def test_routes_sync_keeps_the_last_good_file_and_retries(tmp_path: Path) -> None:
    from openpods.proxy import routes_sync

    out = tmp_path / "pods.yml"
    out.write_text('{"http": {}}')
    stop = threading.Event()
    # Nothing listens on this port: errors are retried, the file is left as it was.
    thread = threading.Thread(target=routes_sync.run, args=("http://127.0.0.1:9", "s", out),
                              kwargs={"retry_sec": (0.01, 0.05), "stop": stop}, daemon=True)
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert out.read_text() == '{"http": {}}'
