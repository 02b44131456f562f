"""Typed settings for every OpenPods process.

Every setting comes, in order of precedence, from: explicit keyword arguments (the CLI's options), the
environment (``OPENPODS_<NAME>``), an optional TOML file (``OPENPODS_CONFIG_FILE`` or ``--config``), and the
embedded defaults below. Units are part of each name or help text.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class TenantSettings(BaseModel):
    """One tenant. The embedded authenticator issues tokens for every tenant; a tenant may instead (or
    also) trust an external issuer by public key or JWKS URL."""

    tenant_id: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$", description="Tenant id, e.g. 'tacc'.")
    base_url: str = Field(
        "", description="Public base URL of this tenant; empty means the service's base URL."
    )
    pods_domain: str = Field(
        "",
        description="Pod hostnames are <pod_id>.<pods_domain>; empty means 'pods.<domain>' for the default "
        "tenant and '<tenant>.pods.<domain>' for the others.",
    )
    issuer_public_key: str = Field("", description="PEM public key (RS256) of an external token issuer.")
    issuer_public_key_file: str = Field("", description="Path to such a PEM public key.")
    jwks_url: str = Field(
        "", description="JWKS URL of an external OIDC issuer whose tokens this tenant accepts."
    )
    jwks_username_claim: str = Field(
        "preferred_username", description="Claim holding the username in tokens of the JWKS issuer."
    )
    admin_users: list[str] = Field(
        default_factory=list,
        description="Usernames that are site admins when authenticated by an external issuer.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENPODS_", extra="ignore", validate_default=True)

    # --- where things live
    data_dir: Path = Field(
        Path("./openpods-data"),
        description="Directory for the database, keys, volumes, logs and TLS material.",
    )
    config_file: Path | None = Field(None, description="Optional TOML file with any of these settings.")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; empty means SQLite at <data_dir>/openpods.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )

    # --- API
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the API.")
    base_url: str = Field(
        "", description="Public base URL of the API (as tapipy's base_url); empty means http://<host>:<port>."
    )
    site_id: str = Field("local", description="Site id reported by /v3/sites.")
    default_tenant: str = Field(
        "default", description="Tenant of the embedded admin and of `users add` by default."
    )
    tenants: list[TenantSettings] = Field(
        default_factory=list, description="Extra tenants (TOML [[tenants]])."
    )
    domain: str = Field("localhost", description="DNS domain under which pod URLs are made (pods.<domain>).")
    admin_password: str = Field(
        "",
        description="Password of the site admin 'admin' created on first start; "
        "empty means a generated one, printed once.",
    )
    token_ttl_sec: int = Field(4 * 3600, ge=60, description="Lifetime of issued access tokens, seconds.")
    token_cache_sec: float = Field(
        5.0,
        ge=0,
        le=60,
        description="Seconds a verified token (with its site-admin flag) is reused without verifying it again; "
        "a revoked token or a changed admin flag takes effect in other processes within this time. 0 disables.",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from browsers (e.g. a TapisUI)."
    )

    import_starter_catalog: bool = Field(
        True,
        description="Import the shipped template catalog (postgres, neo4j, "
        "mongo, …) into the default tenant on first start.",
    )

    # --- pods
    image_allow_list: list[str] = Field(
        default_factory=list,
        description="Images allowed for every tenant, in addition to the allowlist in the database.",
    )
    compute_queues: list[str] = Field(
        default_factory=lambda: ["default"], description="Valid compute_queue values."
    )
    min_time_to_stop_sec: int = Field(
        300, ge=1, description="Smallest allowed time_to_stop_* other than -1, seconds (Tapis: 300)."
    )
    default_time_to_stop_sec: int = Field(43200, description="Default time_to_stop_default, seconds.")
    cpu_request_default: int = Field(250, description="Default cpu_request, millicpu.")
    cpu_limit_default: int = Field(2000, description="Default cpu_limit, millicpu.")
    cpu_min: int = Field(250, description="Smallest cpu request/limit, millicpu.")
    cpu_max: int = Field(6000, description="Largest cpu request/limit, millicpu.")
    mem_request_default: int = Field(256, description="Default mem_request, MiB.")
    mem_limit_default: int = Field(3072, description="Default mem_limit, MiB.")
    mem_min: int = Field(256, description="Smallest mem request/limit, MiB.")
    mem_max: int = Field(12288, description="Largest mem request/limit, MiB.")
    gpus_max: int = Field(1, ge=0, description="Largest gpus value.")
    max_networking_stanzas: int = Field(4, ge=1, description="Most networking stanzas per pod.")
    logs_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Container log bytes kept per pod.")

    # --- controllers
    runtime: Literal["docker", "none"] = Field("docker", description="Container runtime backend.")
    docker_host: str = Field(
        "",
        description="Docker Engine API URL (unix:///…); empty means DOCKER_HOST or a "
        "local Docker/Podman socket found automatically.",
    )
    start_podman_service: bool = Field(
        True,
        description="Start `podman system service` when Podman is installed and no engine socket answers.",
    )
    health_interval_sec: float = Field(2.0, gt=0, description="Seconds between health passes.")
    stuck_deadline_sec: float = Field(
        180.0,
        gt=0,
        description="Seconds a pod may stay in a transitional state "
        "(REQUESTED, SPAWNER SETUP, CREATING, DELETING) before it is re-driven.",
    )
    health_full_pass_every: int = Field(
        30,
        ge=1,
        description="Every Nth health pass reads and decides every pod; the others only pods whose row, "
        "container or deadline changed. 1 makes every pass full.",
    )
    container_stop_timeout_sec: int = Field(
        5, ge=0, description="Seconds between SIGTERM and SIGKILL on stop."
    )
    default_ulimits: list[str] = Field(
        default_factory=lambda: ["nofile=20000:20000", "nproc=32768:32768"],
        description="Container ulimits name=soft:hard.",
    )
    bus: Literal["memory", "rabbitmq"] = Field("memory", description="Command bus implementation.")
    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL for bus=rabbitmq."
    )

    # --- proxy
    proxy_enabled: bool = Field(True, description="Run a Traefik child process (serve only).")
    proxy_http_port: int = Field(8080, ge=0, le=65535, description="Traefik HTTP entrypoint port.")
    proxy_https_port: int = Field(
        8443, ge=0, le=65535, description="Traefik TLS entrypoint port (HTTPS + TCP)."
    )
    proxy_secret: str = Field(
        "",
        description="Shared secret Traefik sends to /traefik-config; empty means "
        "generated into the data dir.",
    )
    proxy_bind_host: str = Field("", description="Interface of Traefik's public entrypoints; empty means all.")
    proxy_api_url: str = Field(
        "",
        description="URL at which Traefik reaches the API (forward-auth, dynamic config); empty means "
        "http://127.0.0.1:<port>.",
    )
    proxy_public_https_port: int = Field(
        0, ge=0, le=65535, description="HTTPS port clients use for pod URLs (in redirects); 0 means proxy_https_port."
    )
    redirect_http_to_https: bool = Field(True, description="Plain-HTTP requests to pod URLs redirect to HTTPS.")
    tls_cert_file: str = Field("", description="PEM certificate for pod URLs; empty means a local CA issues one.")
    tls_key_file: str = Field("", description="PEM key of tls_cert_file.")
    acme_email: str = Field("", description="With an email, Traefik gets certificates from ACME (production).")
    acme_ca_server: str = Field("", description="ACME directory URL; empty means Let's Encrypt production.")

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, init_settings))

    # --- derived values
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'openpods.db'}"

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def all_tenants(self) -> list[TenantSettings]:
        """The default tenant first, then the configured ones (the default one may be configured too)."""
        configured = {t.tenant_id: t for t in self.tenants}
        default = configured.pop(self.default_tenant, None) or TenantSettings(tenant_id=self.default_tenant)
        return [default, *configured.values()]

    def tenant(self, tenant_id: str) -> TenantSettings | None:
        return next((t for t in self.all_tenants() if t.tenant_id == tenant_id), None)

    def tenant_base_url(self, tenant: TenantSettings) -> str:
        return (tenant.base_url or self.effective_base_url).rstrip("/")

    def pods_domain(self, tenant_id: str) -> str:
        tenant = self.tenant(tenant_id)
        if tenant and tenant.pods_domain:
            return tenant.pods_domain
        if tenant_id == self.default_tenant:
            return f"pods.{self.domain}"
        return f"{tenant_id}.pods.{self.domain}"


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by the init kwarg ``config_file`` or ``OPENPODS_CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self._init().get("config_file") or os.environ.get("OPENPODS_CONFIG_FILE")
        if not path:
            return {}
        with open(path, "rb") as fh:
            return tomllib.load(fh)


def field_help(name: str) -> str:
    """Help text of a setting (the CLI shows it for each option)."""
    info = Settings.model_fields[name]
    env = f"OPENPODS_{name.upper()}"
    return f"{info.description} [env {env}]"
