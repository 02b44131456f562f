"""The ``openpods`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from openpods.config import Settings, field_help

app = typer.Typer(
    help="OpenPods: a self-hosted Tapis Pods service.", no_args_is_help=True, pretty_exceptions_enable=False
)
users_app = typer.Typer(help="Users of the embedded authenticator.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
templates_app = typer.Typer(help="Template catalog.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")
app.add_typer(templates_app, name="templates")
console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help=field_help("data_dir"))]
ConfigFile = Annotated[Path | None, typer.Option("--config", help=field_help("config_file"))]


def load_settings(**overrides: Any) -> Settings:
    """Settings from CLI options that were given, then env, then the TOML file, then defaults."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def serve(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    host: Annotated[str | None, typer.Option(help=field_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=field_help("port"))] = None,
    database_url: Annotated[str | None, typer.Option(help=field_help("database_url"))] = None,
    base_url: Annotated[str | None, typer.Option(help=field_help("base_url"))] = None,
    runtime: Annotated[str | None, typer.Option(help=field_help("runtime"))] = None,
    docker_host: Annotated[str | None, typer.Option(help=field_help("docker_host"))] = None,
    proxy: Annotated[
        bool | None, typer.Option("--proxy/--no-proxy", help=field_help("proxy_enabled"))
    ] = None,
    proxy_http_port: Annotated[int | None, typer.Option(help=field_help("proxy_http_port"))] = None,
    proxy_https_port: Annotated[int | None, typer.Option(help=field_help("proxy_https_port"))] = None,
    domain: Annotated[str | None, typer.Option(help=field_help("domain"))] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the API, the spawner, the health loop and Traefik in one process (embedded defaults)."""
    from openpods.server import run

    _logging(log_level)
    settings = load_settings(
        data_dir=data_dir,
        config_file=config,
        host=host,
        port=port,
        database_url=database_url,
        base_url=base_url,
        runtime=runtime,
        docker_host=docker_host,
        proxy_enabled=proxy,
        proxy_http_port=proxy_http_port,
        proxy_https_port=proxy_https_port,
        domain=domain,
    )
    run(settings, roles=("api", "spawner", "health", "proxy"))


@app.command()
def api(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    host: Annotated[str | None, typer.Option(help=field_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=field_help("port"))] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run only the API (cluster shape)."""
    from openpods.server import run

    _logging(log_level)
    run(load_settings(data_dir=data_dir, config_file=config, host=host, port=port), roles=("api",))


@app.command()
def spawner(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run only the spawner (cluster shape)."""
    from openpods.server import run

    _logging(log_level)
    run(load_settings(data_dir=data_dir, config_file=config), roles=("spawner",))


@app.command()
def health(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run only the health loop, the log refresher and the snapshot scheduler (cluster shape). Several may
    run: one leads (a lease in PostgreSQL), the others stand by and take over when it dies."""
    from openpods.server import run

    _logging(log_level)
    run(load_settings(data_dir=data_dir, config_file=config), roles=("health",))


@app.command("ca-cert")
def ca_cert(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print the local CA certificate that signs pod URLs (give it to clients to verify)."""
    from openpods.proxy.tls import ca_certificate_pem
    from openpods.proxy.traefik import traefik_paths
    from openpods.services.proxy import traefik_settings

    settings = load_settings(data_dir=data_dir, config_file=config)
    print(ca_certificate_pem(traefik_paths(traefik_settings(settings, "unused")).tls_dir), end="")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Username.")],
    password: Annotated[str | None, typer.Option(help="Password; prompted for when omitted.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant id (default: the default tenant).")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user a site admin.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add a user (or reset its password) in the embedded authenticator. Works while the server runs."""
    from openpods.auth.revocation import revoke_user_tokens
    from openpods.auth.tokens import hash_password
    from openpods.bootstrap import build_context
    from openpods.store import repo
    from openpods.store.db import transaction
    from openpods.store.tables import User

    settings = load_settings(data_dir=data_dir, config_file=config)
    tenant_id = tenant or settings.default_tenant
    if settings.tenant(tenant_id) is None:
        console.print(f"[red]Unknown tenant {tenant_id!r}[/red]; configure it under [[tenants]] first.")
        raise typer.Exit(2)
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    ctx = build_context(settings)
    with transaction(ctx.sessions) as s:
        user = repo.get_user(s, tenant_id, name)
        if user is None:
            s.add(
                User(
                    tenant_id=tenant_id,
                    username=name,
                    password_hash=hash_password(password),
                    is_admin=admin,
                    created_at=repo.utcnow(),
                )
            )
            action = "added"
        else:
            user.password_hash = hash_password(password)
            user.is_admin = admin or user.is_admin
            # A new password ends every session made with the old one.
            revoke_user_tokens(s, tenant_id, name)
            action = "updated (earlier tokens revoked)"
    console.print(
        f"User [bold]{name}[/bold] {action} in tenant {tenant_id}" + (" (site admin)" if admin else "")
    )


@users_app.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(help="Username (also of an external issuer's tenant).")],
    tenant: Annotated[str | None, typer.Option(help="Tenant id (default: the default tenant).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Revoke every token and pod login session of a user issued until now (works while the server runs)."""
    from openpods.auth.revocation import revoke_user_tokens
    from openpods.bootstrap import build_context
    from openpods.store.db import transaction

    settings = load_settings(data_dir=data_dir, config_file=config)
    tenant_id = tenant or settings.default_tenant
    if settings.tenant(tenant_id) is None:
        console.print(f"[red]Unknown tenant {tenant_id!r}[/red].")
        raise typer.Exit(2)
    ctx = build_context(settings)
    with transaction(ctx.sessions) as s:
        revoke_user_tokens(s, tenant_id, name)
    console.print(f"Tokens of [bold]{name}[/bold] in tenant {tenant_id} issued until now are revoked.")


@users_app.command("list")
def users_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List the embedded authenticator's users."""
    from sqlalchemy import select

    from openpods.bootstrap import build_context
    from openpods.store.tables import User

    ctx = build_context(load_settings(data_dir=data_dir, config_file=config))
    table = Table("tenant", "username", "site admin", "created")
    with ctx.sessions() as s:
        for user in s.scalars(select(User).order_by(User.tenant_id, User.username)):
            table.add_row(
                user.tenant_id,
                user.username,
                "yes" if user.is_admin else "",
                f"{user.created_at:%Y-%m-%d %H:%M}",
            )
    Console().print(table)


@templates_app.command("import")
def templates_import(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Directory of template files (YAML/JSON); default: the shipped starter catalog."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant to import into (default: the default tenant).")
    ] = None,
    owner: Annotated[str, typer.Option(help="User who gets ADMIN on new templates.")] = "admin",
    public: Annotated[
        bool, typer.Option("--public/--private", help="Give every user of the tenant READ.")
    ] = True,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Import templates and their tags (idempotent: unchanged tags are not added again)."""
    from openpods.bootstrap import build_context
    from openpods.catalog import CatalogError
    from openpods.services.catalog import import_catalog
    from openpods.store.db import transaction

    settings = load_settings(data_dir=data_dir, config_file=config)
    ctx = build_context(settings)
    try:
        with transaction(ctx.sessions) as s:
            report = import_catalog(s, tenant or settings.default_tenant, owner, directory, public=public)
    except CatalogError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"created templates: {', '.join(report.created) or '-'}")
    console.print(f"added tags: {', '.join(report.tags_added) or '-'}")
    console.print(f"unchanged tags: {len(report.unchanged)}")


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: Annotated[str | None, typer.Option(help=field_help("database_url"))] = None,
) -> None:
    """Apply database migrations."""
    from openpods.store import db

    settings = load_settings(data_dir=data_dir, config_file=config, database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(db.make_engine(settings.effective_database_url))
    console.print("Database is up to date.")


def main() -> None:  # pragma: no cover
    app()
