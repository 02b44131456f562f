"""Pod operations shared by the API and the controllers: views, credentials, secrets, derived definitions."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from openpods.auth.tokens import SecretBox, random_password
from openpods.config import Settings
from openpods.store.tables import Pod, PodSecret

SERVICE_USERNAME = "podsservice"
POD_VIEW_FIELDS = (
    "pod_id", "image", "template", "description", "command", "arguments", "environment_variables",
    "status_requested", "volume_mounts", "time_to_stop_default", "time_to_stop_instance", "networking",
    "resources", "compute_queue", "time_to_stop_ts", "status", "status_container", "creation_ts", "update_ts",
    "start_instance_ts",
)
_PLACEHOLDER_RE = re.compile(r"<<(?:tapissecret|TAPIS)_([A-Za-z_]+)>>")
SECRET_NAMES = ("user_username", "user_password", "service_username", "service_password")


# Fields the spec types without null: an unset list is shown empty (the runtime treats [] as unset too), an
# unset integer or timestamp is left out (the spec does not require them; tapipy and TapisUI read absent as unset).
EMPTY_AS_LIST = ("command", "arguments")
OMIT_WHEN_NULL = ("time_to_stop_instance", "time_to_stop_ts", "start_instance_ts")


def spec_view(view: dict[str, Any]) -> dict[str, Any]:
    """A pod view (own or derived) without ``null`` where the spec's type has none."""
    for name in EMPTY_AS_LIST:
        if name in view and view[name] is None:
            view[name] = []
    for name in OMIT_WHEN_NULL:
        if name in view and view[name] is None:
            del view[name]
    return view


def pod_view(pod: Pod) -> dict[str, Any]:
    """The PodResponseModel of the spec: the pod's own fields plus status (no secrets, logs or internals)."""
    return spec_view({name: getattr(pod, name) for name in POD_VIEW_FIELDS})


def create_credentials(box: SecretBox, tenant_id: str, pod_id: str) -> PodSecret:
    return PodSecret(
        tenant_id=tenant_id, pod_id=pod_id, user_username=pod_id,
        user_password_enc=box.encrypt(random_password()), service_username=SERVICE_USERNAME,
        service_password_enc=box.encrypt(random_password()),
    )


def pod_secrets(s: Session, box: SecretBox, tenant_id: str, pod_id: str) -> dict[str, str]:
    row = s.get(PodSecret, (tenant_id, pod_id))
    if row is None:
        return {}
    return {
        "user_username": row.user_username,
        "user_password": box.decrypt(row.user_password_enc),
        "service_username": row.service_username,
        "service_password": box.decrypt(row.service_password_enc),
        # Legacy names of the same service account (Tapis stored them as admin_*).
        "admin_username": row.service_username,
        "admin_password": box.decrypt(row.service_password_enc),
    }


def substitute_secrets(values: dict[str, str], secrets: dict[str, str]) -> dict[str, str]:
    """Replace ``<<tapissecret_X>>`` (and legacy ``<<TAPIS_X>>``) with the pod's secret X. Unknown names are
    left as they are (Tapis silently made them empty, hiding typos)."""

    def one(value: str) -> str:
        return _PLACEHOLDER_RE.sub(lambda m: secrets.get(m.group(1), m.group(0)), value)

    return {k: one(v) for k, v in values.items()}


def secret_values(secrets: dict[str, str]) -> list[str]:
    """Values that must never appear in logs, action logs or exec records."""
    return [v for k, v in secrets.items() if k.endswith("password") and v]


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "********")
    return text


def pod_domain(settings: Settings, tenant_id: str) -> str:
    return settings.pods_domain(tenant_id)
