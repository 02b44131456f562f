"""Typed settings for every OpenPods process.

Every setting comes, in order of precedence, from: explicit keyword arguments (the CLI's options), the
environment (``OPENPODS_<NAME>``), an optional TOML file (``OPENPODS_CONFIG_FILE`` or ``--config``), and the
embedded defaults below. Units are part of each name or help text.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
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
    pod_session_ttl_sec: int = Field(
        2 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="Lifetime of the browser login cookie of a tapis_auth pod (valid for that pod's host only, "
        "never for the API), seconds.",
    )
    login_throttle_enabled: bool = Field(
        True,
        description="Slow down password guessing on /v3/oauth2/tokens and the pod login form (per user and per "
        "client address, shared by all API processes through the database).",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Front proxies whose X-Forwarded-For/-Proto headers are believed (comma list of addresses or "
        "CIDR networks, '*' for any): a request from one of them counts as coming from the address it forwards, "
        "e.g. for the per-address login throttle. List only proxies that overwrite the header (Traefik does); "
        "the default trusts the Traefik that OpenPods runs on this machine.",
    )
    login_throttle_user_free_failures: int = Field(
        5, ge=1, description="Failed logins of one (tenant, username) before delays start, count."
    )
    login_throttle_ip_free_failures: int = Field(
        20, ge=1, description="Failed logins from one client address before delays start, count."
    )
    login_throttle_base_delay_sec: float = Field(
        1.0, gt=0, description="First delay after the free failures; it doubles with every further failure, seconds."
    )
    login_throttle_max_delay_sec: float = Field(
        900.0, gt=0, description="Longest delay between two checked login attempts, seconds."
    )
    login_throttle_forget_sec: float = Field(
        3600.0, gt=0, description="Failures older than this (since the last attempt) are forgotten, seconds."
    )
    max_request_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body (JSON, forms) in bytes; larger ones get 413 before they are read "
        "whole.",
    )
    max_upload_bytes: int = Field(
        0,
        ge=0,
        description="Largest body of a file upload (volume, pod, Jupyter) in bytes; 0 means no cap beyond the "
        "volume's size_limit (uploads stream to disk).",
    )
    token_cache_sec: float = Field(
        5.0,
        ge=0,
        le=60,
        description="Seconds a verified token (with its site-admin flag) is reused without verifying it again; "
        "a revoked token or a changed admin flag takes effect in other processes within this time. 0 disables.",
    )
    api_read_connections: int = Field(
        8,
        ge=1,
        le=100,
        description="PostgreSQL: connections (autocommit) on which the API's event loop runs its hottest reads "
        "(get_pod, the pod list's signature), besides the engine's pool.",
        json_schema_extra={"unit": "connections per API process"},
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
    runtime: Literal["docker", "kubernetes", "none"] = Field(
        "docker",
        description="Container runtime backend: 'docker' (a Docker Engine API: Docker or Podman), 'kubernetes' "
        "(pods in a namespace of a cluster; see the kubernetes_* settings) or 'none'.",
    )
    kubernetes_namespace: str = Field(
        "openpods", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63,
        description="Kubernetes namespace of the pods (runtime = kubernetes).",
    )
    kubernetes_kubeconfig: str = Field(
        "",
        description="Path of a kubeconfig file; empty means the pod's service account when running in a cluster, "
        "else ~/.kube/config (or $KUBECONFIG).",
    )
    kubernetes_context: str = Field("", description="kubeconfig context; empty means the current one.")
    kubernetes_api_url: str = Field(
        "", description="Kubernetes API server URL overriding the kubeconfig's (e.g. http://127.0.0.1:8001 of "
        "`kubectl proxy`); empty means from the kubeconfig / service account."
    )
    kubernetes_run_as_non_root: bool = Field(
        False, description="Pods must run as a non-root user (runAsNonRoot; images that need root fail to start)."
    )
    kubernetes_run_as_user: int = Field(
        0, ge=0, description="With kubernetes_run_as_non_root: the user id to run as; 0 means the image's user."
    )
    kubernetes_storage_pvc: str = Field(
        "",
        description="PersistentVolumeClaim (ReadWriteMany, in kubernetes_namespace) that the API, spawner and "
        "health pods mount at <data_dir>; volumes and snapshots live in its storage/ directory and each pod mounts "
        "its part with subPath.",
    )
    kubernetes_storage_nfs_server: str = Field(
        "", description="Instead of a claim: NFS server whose export (kubernetes_storage_nfs_path) the OpenPods "
        "processes mount at <data_dir>."
    )
    kubernetes_storage_nfs_path: str = Field("", description="Exported path on kubernetes_storage_nfs_server.")
    kubernetes_proxy_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/component": "proxy"},
        description="Labels of the proxy (Traefik) pods: the only pods each pod's NetworkPolicy admits.",
    )
    kubernetes_proxy_namespace: str = Field(
        "", description="Namespace of the proxy pods when it is not kubernetes_namespace; empty means the same."
    )
    kubernetes_gpus: bool = Field(False, description="The cluster schedules GPUs (kubernetes_gpu_resource).")
    kubernetes_gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    kubernetes_runtime_class: str = Field(
        "", description="RuntimeClass of the pods (e.g. 'nvidia', 'gvisor'); empty means the cluster default."
    )
    kubernetes_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of the pods."
    )
    kubernetes_start_wait_sec: float = Field(
        20.0, ge=0,
        description="Seconds the spawner waits for the kubelet to start (or refuse) a new pod before leaving it "
        "to the health loop.",
    )
    docker_host: str = Field(
        "",
        description="Docker Engine API URL (unix:///…); empty means DOCKER_HOST or a "
        "local Docker/Podman socket found automatically.",
    )
    start_podman_service: bool = Field(
        True,
        description="Start `podman system service` when Podman is installed and no engine socket answers.",
    )
    engine_events: bool = Field(
        True,
        description="Docker/Podman runtime: keep the list of managed containers in a cache that the engine's event "
        "stream (GET /events) keeps up to date, so a health pass costs one engine call per changed container "
        "instead of a list of every container (Podman: ~1.2 ms per container), and wake the health loop on "
        "container events. The cache is used only while the stream is connected; otherwise every pass lists. "
        "False lists on every pass (the behaviour before). Podman needs an event backend (events_logger 'file' "
        "or 'journald', not 'none').",
    )
    engine_relist_sec: float = Field(
        60.0,
        gt=0,
        description="With engine_events: seconds between full container lists that correct the cache should "
        "events have been missed; run in the background, never inside a health pass.",
    )
    engine_events_lag_sec: float = Field(
        2.0,
        ge=0,
        description="With engine_events: how late an engine event may arrive (Podman polls its event log ~4 "
        "times a second); pods whose status changed this recently are checked with the engine directly.",
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
    volume_size_enforcement: Literal["auto", "loop", "api"] = Field(
        "auto",
        description="How a volume's size_limit is enforced. 'loop': every new volume is its own ext4 filesystem "
        "(a sparse image file, loop-mounted on the volume's directory), so pods get ENOSPC at the limit too "
        "(needs root, util-linux, e2fsprogs and loop devices). 'api': plain directories, only uploads through "
        "the API are checked. 'auto': 'loop' where possible, else 'api' (logged at start).",
    )
    storage_housekeeping_interval_sec: float = Field(
        600.0,
        gt=0,
        description="Seconds between passes that remove what interrupted uploads left in volumes (also done on "
        "start).",
    )
    pod_network: str = Field(
        "",
        description="Engine network of pod containers. Empty: every pod gets a private bridge network of its "
        "own (made and removed with its container), so pods cannot reach each other; they are reached only "
        "through their ports published on 127.0.0.1 (Traefik). A name: all pods join that existing network "
        "(e.g. 'podman', the engine's shared bridge, where pods CAN reach each other).",
    )
    container_cap_drop: list[str] = Field(
        default_factory=lambda: ["NET_RAW", "MKNOD", "AUDIT_WRITE", "SYS_CHROOT", "SETFCAP", "SETPCAP"],
        description="Linux capabilities removed from every pod container (names without CAP_). The default "
        "keeps CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETUID, SETGID and NET_BIND_SERVICE, which common "
        "images (postgres, nginx, ...) need to start.",
    )
    container_no_new_privileges: bool = Field(
        True, description="Run pod containers with no-new-privileges (setuid binaries cannot gain privileges)."
    )
    container_userns: str = Field(
        "",
        description="User-namespace mode of pod containers (Podman: 'auto' maps container root to an unprivileged "
        "host uid range; needs /etc/subuid and /etc/subgid entries for user 'containers'). Empty: the engine's "
        "default (container root is host root).",
    )
    volume_mount_pinning: bool = Field(
        True,
        description="Pin the source of every volume/snapshot mount with a sub_path (resolve it without following "
        "symlinks and bind-mount the pinned directory under <data_dir>/pins), so that a pod cannot redirect "
        "another pod's mount to a host directory by swapping a directory for a symlink. Needs OpenPods to run "
        "as root in the engine's mount namespace; where it cannot, such pods go to ERROR with the reason. "
        "false mounts sub_paths by path (raceable; only for an engine in another mount namespace and "
        "trusted users).",
    )
    leader_lease_sec: float = Field(
        15.0,
        gt=0,
        description="Lease of the health leader (PostgreSQL; several `openpods health` processes), seconds. "
        "When the leader dies, another process takes over within leader_lease_sec + leader_retry_sec.",
    )
    leader_renew_sec: float = Field(
        5.0,
        gt=0,
        description="Seconds between lease renewals by the health leader; at most half of leader_lease_sec. A "
        "leader that could not renew for leader_lease_sec - leader_renew_sec stops acting, before anyone "
        "else can take over.",
    )
    leader_retry_sec: float = Field(
        2.0, gt=0, description="Seconds between attempts of a health process that is not leader to take the lease."
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
    proxy_provider: Literal["file", "http"] = Field(
        "file",
        description="How the supervised Traefik learns pod routes: 'file' (OpenPods writes them into Traefik's "
        "watched directory on every change: live within tens of milliseconds) or 'http' (Traefik polls "
        "/traefik-config every proxy_poll_interval_sec, as in the cluster shape).",
    )
    proxy_poll_interval_sec: float = Field(
        1.0, ge=0.05, description="Seconds between Traefik's polls of /traefik-config (proxy_provider=http)."
    )
    proxy_sync_interval_sec: float = Field(
        0.5,
        gt=0,
        description="Seconds between checks of the database for pod changes made by other processes (changes "
        "made in this process update the routes at once).",
    )
    proxy_access_log: bool = Field(
        False,
        description="Traefik writes an access log to <data_dir>/traefik/access.log (costs ~30% of proxy "
        "throughput unbuffered).",
    )
    proxy_access_log_buffer_lines: int = Field(
        0,
        ge=0,
        description="Access log lines Traefik buffers before writing (accessLog.bufferingSize); 0 means every "
        "line is written at once.",
    )
    redirect_http_to_https: bool = Field(True, description="Plain-HTTP requests to pod URLs redirect to HTTPS.")
    tls_cert_file: str = Field("", description="PEM certificate for pod URLs; empty means a local CA issues one.")
    tls_key_file: str = Field("", description="PEM key of tls_cert_file.")
    acme_email: str = Field("", description="With an email, Traefik gets certificates from ACME (production).")
    acme_ca_server: str = Field("", description="ACME directory URL; empty means Let's Encrypt production.")

    @model_validator(mode="after")
    def _lease_times(self) -> Settings:
        if self.leader_renew_sec * 2 > self.leader_lease_sec:
            raise ValueError("leader_renew_sec must be at most half of leader_lease_sec")
        return self

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


# Units by name suffix/prefix, for settings whose unit is not already the whole story of their type.
_UNIT_RULES: tuple[tuple[str, str], ...] = (
    (r"_sec$", "seconds"),
    (r"_bytes$", "bytes"),
    (r"^cpu_", "millicpu (1000 = 1 CPU)"),
    (r"^mem_", "MiB"),
    (r"_port$", "TCP port number"),
    (r"_max$|_stanzas$|_failures$|_every$", "count"),
    (r"_lines$", "lines"),
    (r"_as_user$", "numeric user id (uid)"),
)


def field_env(name: str) -> str:
    """The environment variable of a setting."""
    return f"OPENPODS_{name.upper()}"


def field_unit(name: str) -> str:
    """The unit of a numeric setting ('' when it has none): ``json_schema_extra={"unit": …}`` or by name."""
    extra = Settings.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and extra.get("unit"):
        return str(extra["unit"])
    return next((unit for pattern, unit in _UNIT_RULES if re.search(pattern, name)), "")


def field_default(name: str) -> Any:
    info = Settings.model_fields[name]
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


def field_help(name: str) -> str:
    """Plain help text of a setting: description, unit, environment variable and default (the CLI shows it
    for each option; it has no markup, so the CLI escapes it)."""
    info = Settings.model_fields[name]
    parts = [(info.description or name).rstrip(".") + "."]
    if unit := field_unit(name):
        parts.append(f"Unit: {unit}.")
    parts.append(f"Env: {field_env(name)}.")
    default = field_default(name)
    if "password" in name or "secret" in name:
        parts.append("Default: generated." if not default else "")
    elif isinstance(default, list):
        parts.append(f"Default: {', '.join(map(str, default)) or '(none)'}.")
    elif default in ("", None):
        parts.append("Default: (empty).")
    else:
        parts.append(f"Default: {default}.")
    return " ".join(p for p in parts if p)
