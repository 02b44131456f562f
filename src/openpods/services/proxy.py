"""The proxy as the API sees it: Traefik settings from the site's settings, and the dynamic config rendered
from the database (cached until a pod row changes)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from openpods.config import Settings
from openpods.domain import status as st
from openpods.domain.traefik_config import PodRoutes, ProxyRenderSettings, render_dynamic_config
from openpods.proxy.traefik import AcmeSettings, TraefikSettings, proxy_render_settings
from openpods.store.tables import Pod


def api_url(settings: Settings) -> str:
    if settings.proxy_api_url:
        return settings.proxy_api_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def tls_names(settings: Settings) -> tuple[str, ...]:
    names: list[str] = []
    for tenant in settings.all_tenants():
        domain = settings.pods_domain(tenant.tenant_id)
        names += [f"*.{domain}", domain]
    names += [settings.domain, "127.0.0.1"]
    return tuple(dict.fromkeys(names))


def traefik_settings(settings: Settings, secret: str) -> TraefikSettings:
    acme = AcmeSettings(email=settings.acme_email, ca_server=settings.acme_ca_server or None) \
        if settings.acme_email else None
    return TraefikSettings(
        data_dir=settings.data_dir, api_url=api_url(settings), secret=secret,
        http_port=settings.proxy_http_port, https_port=settings.proxy_https_port, bind_host=settings.proxy_bind_host,
        domains=(settings.domain,), tls_names=tls_names(settings),
        tls_cert_file=Path(settings.tls_cert_file) if settings.tls_cert_file else None,
        tls_key_file=Path(settings.tls_key_file) if settings.tls_key_file else None, acme=acme,
    )


def render_settings(settings: Settings, secret: str) -> ProxyRenderSettings:
    base = proxy_render_settings(
        traefik_settings(settings, secret),
        forward_auth_url=api_url(settings) + "/v3/pods/{pod_id_net}/auth?tenant={tenant_id}",
        redirect_http_to_https=settings.redirect_http_to_https,
    )
    public_port = settings.proxy_public_https_port or settings.proxy_https_port
    from dataclasses import replace

    return replace(base, api_url=api_url(settings), https_redirect_port=public_port, forward_auth_secret=secret)


class DynamicConfig:
    """Renders the Traefik dynamic config; re-renders only when some pod row changed (Traefik polls every
    second, and a 10,000-pod render costs far more than the change check)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._body = b"{}"
        self.errors: dict[tuple[str, str], list[str]] = {}
        self.fresh = False

    @staticmethod
    def _change_key(s: Session) -> tuple[Any, ...]:
        row = s.execute(select(func.count(), func.sum(Pod.revision), func.max(Pod.update_ts),
                               func.max(Pod.status_since))).one()
        return tuple(row)

    def body(self, s: Session, settings: Settings, secret: str) -> bytes:
        key = self._change_key(s)
        with self._lock:
            if key == self._key:
                return self._body
        rows = s.execute(
            select(Pod.tenant_id, Pod.pod_id, Pod.routes, Pod.host_ports)
            .where(Pod.status == st.AVAILABLE, Pod.status_requested == st.ON)
            .order_by(Pod.creation_ts, Pod.tenant_id, Pod.pod_id)
        )
        routes = []
        for tenant_id, pod_id, stanzas, host_ports in rows:
            # Rows are data, possibly malformed: the renderer validates and reports per pod.
            hostnames = ({k: v.get("url", "") for k, v in stanzas.items() if isinstance(v, dict)}
                         if isinstance(stanzas, dict) else {})
            # ints: host ports on 127.0.0.1 (Docker); strings: host:port endpoints (Kubernetes Services).
            backends = ({k: p if isinstance(p, str) else f"127.0.0.1:{p}" for k, p in host_ports.items()}
                        if isinstance(host_ports, dict) else {})
            routes.append(PodRoutes(tenant_id=tenant_id, pod_id=pod_id, stanzas=stanzas, hostnames=hostnames,
                                    backends=backends))
        result = render_dynamic_config(routes, render_settings(settings, secret))
        body = json.dumps(result.config, separators=(",", ":")).encode()
        with self._lock:
            self._key, self._body = key, body
            self.errors = result.errors
            self.fresh = True
        return body

    def take_fresh_errors(self) -> dict[tuple[str, str], list[str]] | None:
        """The errors of the last render, once per render (None if already taken)."""
        with self._lock:
            if not self.fresh:
                return None
            self.fresh = False
            return dict(self.errors)
