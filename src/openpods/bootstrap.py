"""Builds a process's AppContext from Settings: data dir, database + migrations, keys, first-start admin."""

from __future__ import annotations

import logging
import os
import sys

from openpods.auth.token_cache import VerifiedTokenCache
from openpods.auth.tokens import (
    SecretBox,
    TokenService,
    hash_password,
    load_or_create_secret,
    random_password,
)
from openpods.bus.base import Bus
from openpods.bus.memory import MemoryBus
from openpods.config import Settings
from openpods.context import AppContext
from openpods.store import db, repo
from openpods.store.tables import User

log = logging.getLogger(__name__)


def make_bus(settings: Settings) -> Bus:
    if settings.bus == "rabbitmq":
        from openpods.bus.rabbitmq import RabbitMQBus

        return RabbitMQBus(settings.rabbitmq_url, queue_prefix=f"openpods_{settings.site_id}")
    return MemoryBus()


def build_context(settings: Settings, *, migrate: bool = True, bus: Bus | None = None) -> AppContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(settings.data_dir, 0o700)
    except PermissionError:  # a mounted volume we may write but do not own (Kubernetes claim, fsGroup)
        log.warning("cannot restrict %s to mode 0700 (not its owner); its mount must protect it",
                    settings.data_dir)
    engine = db.make_engine(settings.effective_database_url)
    if migrate:
        db.upgrade(engine)
    keys = settings.data_dir / "keys"
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessions=db.make_sessionmaker(engine),
        tokens=TokenService(settings),
        secrets=SecretBox(keys),
        bus=bus or make_bus(settings),
        proxy_secret=settings.proxy_secret or load_or_create_secret(keys / "proxy-secret"),
    )
    ctx.token_cache = VerifiedTokenCache(settings.token_cache_sec)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        from openpods.store.asyncread import AsyncReadPool

        ctx.reads = AsyncReadPool(engine, settings.api_read_connections)
    from openpods.services.proxy import make_route_table

    ctx.proxy_config = make_route_table(settings, ctx.sessions, ctx.proxy_secret)
    ctx.installation_id = installation_id(ctx)
    return ctx


def installation_id(ctx: AppContext) -> str:
    """A random id made once per installation (database); it labels our containers so that two installations
    sharing one container engine never remove each other's containers."""
    import uuid

    from openpods.store.tables import Meta

    with db.transaction(ctx.sessions) as s:
        row = s.get(Meta, "installation_id")
        if row is None:
            row = Meta(key="installation_id", value=uuid.uuid4().hex[:16])
            s.add(row)
        return row.value


def ensure_admin(ctx: AppContext, *, announce: bool = True) -> str | None:
    """Creates the site admin ``admin`` in the default tenant on first start. Returns a generated password
    (printed once) or None when the admin existed or the password came from OPENPODS_ADMIN_PASSWORD."""
    tenant = ctx.settings.default_tenant
    with db.transaction(ctx.sessions) as s:
        if repo.get_user(s, tenant, "admin") is not None:
            return None
        password = ctx.settings.admin_password or random_password(20)
        s.add(
            User(
                tenant_id=tenant,
                username="admin",
                password_hash=hash_password(password),
                is_admin=True,
                created_at=repo.utcnow(),
            )
        )
    if ctx.settings.admin_password:
        return None
    if announce:
        print(
            f"Created site admin 'admin' in tenant '{tenant}' with password: {password}\n"
            "(shown once; set OPENPODS_ADMIN_PASSWORD to choose it)",
            file=sys.stderr,
            flush=True,
        )
    return password


def ensure_starter_catalog(ctx: AppContext) -> None:
    """On first start, the shipped template catalog is imported into the default tenant, public (``*`` READ)
    and owned by ``admin``. A marker file keeps later starts from re-adding templates an admin deleted."""
    from openpods.services.catalog import import_catalog

    marker = ctx.settings.data_dir / ".starter-catalog-imported"
    if marker.exists():
        return
    with db.transaction(ctx.sessions) as s:
        report = import_catalog(s, ctx.settings.default_tenant, "admin", allow_images=True)
    marker.write_text("\n".join(report.created) + "\n")
    log.info("imported starter templates: %s", ", ".join(report.created) or "none")
