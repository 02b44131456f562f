"""The ``openpods`` command."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from rich.console import Console
from rich.markup import escape
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

DataDir = Annotated[Path | None, typer.Option("--data-dir", help=escape(field_help("data_dir")))]
ConfigFile = Annotated[Path | None, typer.Option("--config", help=escape(field_help("config_file")))]


def load_settings(**overrides: Any) -> Settings:
    """Settings from CLI options that were given, then env, then the TOML file, then defaults."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# Options whose flag differs from the setting's name (the rest are --<name-with-dashes>).
_OPTION_FLAGS: dict[str, tuple[str, ...]] = {
    "config_file": ("--config", "--config-file"),
    "proxy_enabled": ("--proxy/--no-proxy",),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _setting_option(name: str) -> tuple[Any, Any]:
    """(annotation, typer.Option) of the CLI option for one setting. Every option defaults to None (not
    given), so the environment, the TOML file and the embedded default apply unless it is given. Help text is
    escaped: Rich would take ``[…]`` for markup and drop it."""
    info = Settings.model_fields[name]
    annotation = info.annotation
    help_text = escape(field_help(name))
    decls = _OPTION_FLAGS.get(name)
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        decls = decls or (f"{_flag(name)}/--no-{name.replace('_', '-')}",)
        return bool | None, typer.Option(None, *decls, help=help_text, show_default=False)
    decls = decls or (_flag(name),)
    if origin is Literal:
        return annotation | None, typer.Option(None, *decls, help=help_text)
    if origin is list and args and args[0] is str:
        return list[str] | None, typer.Option(None, *decls, help=help_text + " Repeat the option for more.")
    if origin is list:  # structured lists (tenants): JSON, as in the environment variable
        return str | None, typer.Option(None, *decls, help=help_text + " As JSON.", metavar="JSON")
    if annotation in (int, float):
        return annotation | None, typer.Option(None, *decls, help=help_text)
    if Path in (annotation, *args):
        return Path | None, typer.Option(None, *decls, help=help_text)
    return str | None, typer.Option(None, *decls, help=help_text)


def _settings_from_options(values: dict[str, Any]) -> Settings:
    given: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == []:
            continue
        if name in Settings.model_fields and get_origin(Settings.model_fields[name].annotation) is list \
                and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"{_flag(name)}: not JSON ({exc})") from None
        given[name] = value
    return load_settings(**given)


def _role_command(name: str, roles: tuple[str, ...], doc: str) -> None:
    """Registers a command that runs ``roles`` with every setting as an option (the signature is built from
    ``Settings``, so a new setting gets its option without touching this file)."""

    def command(**kwargs: Any) -> None:
        from openpods.server import run

        _logging(kwargs.pop("log_level"))
        run(_settings_from_options(kwargs), roles=roles)

    params = []
    annotations: dict[str, Any] = {}
    for field_name in Settings.model_fields:
        annotation, option = _setting_option(field_name)
        params.append(inspect.Parameter(field_name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=annotation))
        annotations[field_name] = annotation
    params.append(inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY,
                                    default=typer.Option("info", help="Log level."), annotation=str))
    annotations["log_level"] = str
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = doc
    command.__name__ = name
    app.command(
        name,
        epilog=escape(
            "Every option can also be set by its environment variable (OPENPODS_<NAME>) or in the TOML file "
            "of --config; an option given here wins over both."
        ),
    )(command)


_role_command("serve", ("api", "spawner", "health", "proxy"),
              "Run the API, the spawner, the health loop and Traefik in one process (embedded defaults).")
_role_command("api", ("api",), "Run only the API (cluster shape).")
_role_command("spawner", ("spawner",), "Run only the spawner (cluster shape).")
_role_command("health", ("health",),
              "Run only the health loop, the log refresher and the snapshot scheduler (cluster shape). Several "
              "may run: one leads (a lease in PostgreSQL), the others stand by and take over when it dies.")


@app.command("routes-sync")
def routes_sync(
    out: Annotated[Path, typer.Option(help="The routes file to keep up to date, in the directory Traefik's file "
                                           "provider watches.")],
    api_url: Annotated[str, typer.Option(envvar="OPENPODS_PROXY_API_URL",
                                         help="Base URL of the OpenPods API, as Traefik reaches it.")],
    secret: Annotated[str, typer.Option(envvar="OPENPODS_PROXY_SECRET", show_default=False,
                                        help="The proxy secret (X-OpenPods-Proxy-Secret).")],
    wait: Annotated[float, typer.Option(min=1, max=300, help="Long-poll duration, seconds.")] = 30.0,
    include: Annotated[Path | None, typer.Option(help="A directory of static Traefik config files (e.g. a "
                                                      "mounted ConfigMap) to copy next to the routes file once "
                                                      "at start.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Write the API's Traefik routes to a file as soon as they change (a sidecar of a Traefik that runs apart
    from the API: the cluster shape)."""
    from openpods.proxy import routes_sync as sync

    _logging(log_level)
    sync.run(api_url, secret, out, wait_sec=wait, include=include)


@app.command("ca-cert")
def ca_cert(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print the local CA certificate that signs pod URLs (give it to clients to verify)."""
    from openpods.proxy.tls import ca_certificate_pem
    from openpods.proxy.traefik import traefik_paths
    from openpods.services.proxy import traefik_settings

    settings = load_settings(data_dir=data_dir, config_file=config)
    print(ca_certificate_pem(traefik_paths(traefik_settings(settings, "unused")).tls_dir), end="")


def _settings_and_tenant(data_dir: Path | None, config: Path | None, tenant: str | None) -> tuple[Settings, str]:
    """The settings and the tenant a `users` command works on (exit 2 for a tenant that is not configured)."""
    settings = load_settings(data_dir=data_dir, config_file=config)
    tenant_id = tenant or settings.default_tenant
    if settings.tenant(tenant_id) is None:
        console.print(f"[red]Unknown tenant {tenant_id!r}[/red]; configure it under \\[\\[tenants]] first.")
        raise typer.Exit(2)
    return settings, tenant_id


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

    settings, tenant_id = _settings_and_tenant(data_dir, config, tenant)
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

    settings, tenant_id = _settings_and_tenant(data_dir, config, tenant)
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
    database_url: Annotated[str | None, typer.Option(help=escape(field_help("database_url")))] = None,
) -> None:
    """Apply database migrations."""
    from openpods.store import db

    settings = load_settings(data_dir=data_dir, config_file=config, database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(db.make_engine(settings.effective_database_url))
    console.print("Database is up to date.")


def main() -> None:  # pragma: no cover
    app()
