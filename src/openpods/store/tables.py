"""SQLAlchemy tables. Every object row is scoped by tenant; timestamps are naive UTC (as Tapis returns them).

Schema changes go through Alembic (``store/migrations``); never edit a released migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime()}


class User(Base):
    """A user of the embedded authenticator."""

    __tablename__ = "users"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class Pod(Base):
    __tablename__ = "pods"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pod_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # --- what the owner asked for (desired state)
    image: Mapped[str] = mapped_column(String(255), default="")
    template: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    command: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    arguments: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    environment_variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_requested: Mapped[str] = mapped_column(String(16), default="ON")
    volume_mounts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    time_to_stop_default: Mapped[int] = mapped_column(Integer, default=43200)
    time_to_stop_instance: Mapped[int | None] = mapped_column(Integer, nullable=True)
    networking: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    compute_queue: Mapped[str] = mapped_column(String(64), default="default")
    modified_fields: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # --- what the controllers observed (actual state)
    status: Mapped[str] = mapped_column(String(32), default="STOPPED")
    status_container: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_since: Mapped[datetime]
    instance_id: Mapped[str] = mapped_column(String(64), default="")
    host_ports: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The derived networking stanzas (templates merged, URLs set) of the running instance: what the proxy routes.
    routes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    proxy_errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    time_to_stop_ts: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    start_instance_ts: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    creation_ts: Mapped[datetime]
    update_ts: Mapped[datetime]
    # Bumped on every write: optimistic concurrency between API and controllers. Rendered pod views are cached
    # by it (api.rawjson) and the health loop re-reads rows by it: a Core UPDATE of a pod column must bump it.
    revision: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        Index("ix_pods_status", "status"),
        # Covering: list_pods' signature and the health loop's revision scan read only the index. A row's
        # version is (revision, creation_ts): a pod deleted and made again starts its revisions over.
        Index("ix_pods_revision", "tenant_id", "pod_id", "revision", "creation_ts"),
    )
    __mapper_args__ = {"version_id_col": revision}


class PodSecret(Base):
    """Pod credentials, encrypted at rest (Fernet with a key from the data dir)."""

    __tablename__ = "pod_secrets"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pod_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_username: Mapped[str] = mapped_column(String(128))
    user_password_enc: Mapped[str] = mapped_column(Text)
    service_username: Mapped[str] = mapped_column(String(128))
    service_password_enc: Mapped[str] = mapped_column(Text)


class PodLog(Base):
    """The latest container output of a pod (bounded), kept after it stops until the next start."""

    __tablename__ = "pod_logs"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pod_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64), default="")
    logs: Mapped[str] = mapped_column(Text, default="")
    updated_ts: Mapped[datetime]


class ActionLog(Base):
    __tablename__ = "action_logs"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    object_type: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(128))
    ts: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_action_logs_object", "object_type", "tenant_id", "object_id", "id"),)


class Permission(Base):
    """``user:LEVEL`` grants on pods, volumes, snapshots and templates."""

    __tablename__ = "permissions"
    object_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    level: Mapped[str] = mapped_column(String(8))

    __table_args__ = (Index("ix_permissions_user", "object_type", "tenant_id", "username"),)


class Image(Base):
    """Site-wide image allowlist entry; ``tenants`` scopes it (``**``, a tenant id, ``-tenant``)."""

    __tablename__ = "images"
    image: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(String(255), default="")
    creation_ts: Mapped[datetime]
    added_by: Mapped[str] = mapped_column(String(128), default="")


class Template(Base):
    __tablename__ = "templates"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    template_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    metatags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    archive_message: Mapped[str] = mapped_column(String(255), default="")
    creation_ts: Mapped[datetime]
    update_ts: Mapped[datetime]


class TemplateTag(Base):
    __tablename__ = "template_tags"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    template_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag_timestamp: Mapped[str] = mapped_column(String(128), primary_key=True)
    tag: Mapped[str] = mapped_column(String(80))
    pod_definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    commit_message: Mapped[str] = mapped_column(String(255), default="")
    added_by: Mapped[str] = mapped_column(String(128), default="")
    creation_ts: Mapped[datetime]
    # Strictly increasing per template: orders tags made within the same second.
    seq: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_template_tags_tag", "tenant_id", "template_id", "tag", "seq"),
        # seq decides which version is newest: two concurrent writers must not share one.
        Index("ux_template_tags_seq", "tenant_id", "template_id", "seq", unique=True),
    )


class Meta(Base):
    """Installation-wide facts (e.g. the installation id that labels this installation's containers)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LeaderLease(Base):
    """A lease that makes one process the leader of a singleton group (controllers/leader.py); times are the
    database server's (naive UTC)."""

    __tablename__ = "leader_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    epoch: Mapped[int] = mapped_column(BigInteger, default=1)  # bumped whenever the holder changes
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class Volume(Base):
    __tablename__ = "volumes"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    volume_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    size_limit: Mapped[int] = mapped_column(Integer, default=1024)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(32), default="REQUESTED")
    creation_ts: Mapped[datetime]
    update_ts: Mapped[datetime]


class Snapshot(Base):
    __tablename__ = "snapshots"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source_volume_id: Mapped[str] = mapped_column(String(128))
    source_volume_path: Mapped[str] = mapped_column(String(1024))
    destination_path: Mapped[str] = mapped_column(String(1024), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    size_limit: Mapped[int] = mapped_column(Integer, default=1024)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(32), default="REQUESTED")
    cron: Mapped[str] = mapped_column(String(128), default="")
    retention_policy: Mapped[str] = mapped_column(String(128), default="")
    # Scheduled runs are snapshots of their own whose parent is the scheduled snapshot.
    parent_snapshot_id: Mapped[str] = mapped_column(String(128), default="")
    last_run_slot: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    creation_ts: Mapped[datetime]
    update_ts: Mapped[datetime]


class TokenCutoff(Base):
    """Per-user revocation: every token of the user issued before ``not_before_ms`` (epoch milliseconds) is
    refused. Set by a password change, `openpods users revoke` and logout with ``all``. Works for users of
    external issuers too (no row in ``users`` is needed)."""

    __tablename__ = "token_cutoffs"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    not_before_ms: Mapped[int] = mapped_column(BigInteger)


class UsedToken(Base):
    """Revoked token ids (logout) and consumed one-time login codes; a row can go once ``expires_at`` (epoch
    seconds) has passed, because the token itself is refused from then on."""

    __tablename__ = "used_tokens"
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_used_tokens_expires", "expires_at"),)


class LoginThrottle(Base):
    """Password-guess throttling shared by every API process: ``key`` is ``user:<tenant>/<username>`` or
    ``ip:<address>``; ``failures`` counts attempts not yet reset by a success; no attempt is checked before
    ``next_allowed`` (epoch seconds)."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_allowed: Mapped[float] = mapped_column(Float, default=0.0)
    last_attempt: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (Index("ix_login_throttle_last", "last_attempt"),)
