"""Template references, recursive resolution, and the merge of a pod with its template chain.

Pure: no I/O. The store supplies a ``lookup`` callable, and the API layer maps the exceptions below to HTTP
responses (all of them are client errors: :class:`TemplateRefError`, :class:`TemplateLoop` and
:class:`TemplateChainTooDeep` → 400, :class:`TemplateNotFound` → 404 or 400 depending on the endpoint).

Vocabulary
----------
template reference
    What a user writes in ``pod.template`` or in a tag's ``pod_definition["template"]``:

    - ``name``                        → the newest version of the tag ``latest`` of template ``name``;
    - ``name:tag``                    → the newest version of ``tag`` of template ``name``;
    - ``name:tag@YYYY-MM-DD-HH:MM:SS`` → exactly that version (its ``tag_timestamp``).

tag_timestamp
    The immutable version id of a tag, unique **within a template**: ``<tag>@YYYY-MM-DD-HH:MM:SS`` (UTC,
    second resolution, as in Tapis). A second version of the same tag created in the same second gets the
    suffix ``.2``, the third ``.3`` and so on (``latest@2025-01-30-17:14:14.2``); see
    :func:`format_tag_timestamp`. The first version never carries a suffix, so Tapis-style references keep
    working unchanged.

pinned reference
    ``template_id:tag@timestamp`` — the canonical reference stored on a pod after resolution (:func:`pin`).
    ``restart_pod?grab_latest_template_tag=true`` re-resolves :func:`unpin` of it.

user-set fields
    The fields the user actually sent for a pod (:func:`user_set_fields`), recorded with the pod. Only they
    override templates; every other pod field comes from the template chain or the defaults
    (:func:`merge_pod`). Entries are top-level field names, plus ``resources.<sub>`` for each resources
    sub-field and ``networking.<key>`` / ``networking.<key>.<field>`` for each networking stanza and stanza
    field that was sent (so a user can override only the port of a template's stanza even when the store
    keeps the pod's stanzas with all defaults filled in).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_TAG",
    "DEFINITION_FIELDS",
    "KEYED_FIELDS",
    "POD_DEFAULTS",
    "SCALAR_FIELDS",
    "TIMESTAMP_FORMAT",
    "Lookup",
    "TagRecord",
    "TemplateChainTooDeep",
    "TemplateError",
    "TemplateLoop",
    "TemplateNotFound",
    "TemplateRef",
    "TemplateRefError",
    "check_tag",
    "check_template_id",
    "definition_from_pod",
    "format_tag_timestamp",
    "merge_pod",
    "parse_tag_timestamp",
    "parse_template_ref",
    "pin",
    "resolve_chain",
    "tag_timestamp_sort_key",
    "unpin",
    "update_user_set",
    "user_set_fields",
]

# ---------------------------------------------------------------------------------- constants

TEMPLATE_ID_RE = re.compile(r"^[a-z][a-z0-9]+$")
TEMPLATE_ID_MIN, TEMPLATE_ID_MAX = 3, 64
RESERVED_TEMPLATE_IDS = frozenset({"tags"})
TAG_RE = re.compile(r"^[A-Za-z0-9.-]+$")
TAG_MAX = 80
DEFAULT_TAG = "latest"
DEFAULT_MAX_DEPTH = 10
#: strftime/strptime format of the timestamp part of a tag_timestamp (always UTC).
TIMESTAMP_FORMAT = "%Y-%m-%d-%H:%M:%S"
_TIMESTAMP_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2})(?:\.([1-9][0-9]{0,8}))?$")

#: Fields of a pod that a template tag's ``pod_definition`` may carry (spec: TemplateTagPodDefinition).
DEFINITION_FIELDS: tuple[str, ...] = (
    "image",
    "template",
    "description",
    "command",
    "arguments",
    "environment_variables",
    "volume_mounts",
    "time_to_stop_default",
    "time_to_stop_instance",
    "networking",
    "resources",
    "compute_queue",
)
#: Fields merged as a whole value: the user's value, else the nearest template's, else the default.
SCALAR_FIELDS: tuple[str, ...] = (
    "image",
    "description",
    "command",
    "arguments",
    "compute_queue",
    "time_to_stop_default",
    "time_to_stop_instance",
)
#: Fields merged key by key.
KEYED_FIELDS: tuple[str, ...] = ("environment_variables", "networking", "volume_mounts")
#: Fields where the empty string means "not given" (the spec uses ``""`` as their "none" value).
_EMPTY_MEANS_UNSET = frozenset({"image", "template", "compute_queue"})

#: The spec's NewPod defaults (v1.9.0), suitable as ``defaults`` for :func:`merge_pod`. Sites with other
#: resource defaults pass their own ``resources`` sub-dict.
POD_DEFAULTS: dict[str, Any] = {
    "image": "",
    "description": "",
    "command": None,
    "arguments": None,
    "environment_variables": {},
    "volume_mounts": {},
    "time_to_stop_default": 43200,
    "time_to_stop_instance": None,
    "networking": {"default": {"protocol": "http", "port": 5000}},
    "resources": {"cpu_request": 250, "cpu_limit": 2000, "mem_request": 256, "mem_limit": 3072, "gpus": 0},
    "compute_queue": "default",
}

#: Setting one of these to "false" in the pod's own (user-set) environment_variables ignores the templates'
#: environment variables / volume mounts (Tapis compatibility; the variable itself stays in the env).
USE_TEMPLATE_ENVS_VAR = "_TAPIS_INTERNAL_USE_TEMPLATE_ENVS"
USE_TEMPLATE_VOLUMES_VAR = "_TAPIS_INTERNAL_USE_TEMPLATE_VOLUMES"


# ---------------------------------------------------------------------------------- errors


class TemplateError(Exception):
    """Base class of every error raised by this module."""


class TemplateRefError(TemplateError, ValueError):
    """A malformed template reference, template id, tag or tag_timestamp (HTTP 400)."""


class TemplateNotFound(TemplateError, LookupError):
    """The template or tag named does not exist (or is not visible to the caller)."""

    def __init__(self, message: str, ref: TemplateRef | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class TemplateLoop(TemplateError, ValueError):
    """The same template appears twice in a chain (HTTP 400). ``chain`` lists the references in order."""

    def __init__(self, message: str, chain: list[str]) -> None:
        super().__init__(message)
        self.chain = chain


class TemplateChainTooDeep(TemplateError, ValueError):
    """A chain has more levels than allowed (HTTP 400). ``chain`` lists the references in order."""

    def __init__(self, message: str, chain: list[str]) -> None:
        super().__init__(message)
        self.chain = chain


# ---------------------------------------------------------------------------------- ids


def check_template_id(value: str) -> str:
    """Return ``value`` if it is a valid template id (``^[a-z][a-z0-9]+$``, 3-64, not ``tags``).

    Raises :class:`TemplateRefError` naming the problem otherwise.
    """
    if not isinstance(value, str) or not value:
        raise TemplateRefError("template id is empty.")
    if not TEMPLATE_ID_MIN <= len(value) <= TEMPLATE_ID_MAX:
        raise TemplateRefError(
            f"template id {value!r} must be {TEMPLATE_ID_MIN}-{TEMPLATE_ID_MAX} characters long."
        )
    if not TEMPLATE_ID_RE.match(value):
        raise TemplateRefError(
            f"template id {value!r} must be lowercase letters and digits only, starting with a letter."
        )
    if value in RESERVED_TEMPLATE_IDS:
        raise TemplateRefError(f"template id {value!r} is reserved.")
    return value


def check_tag(value: str) -> str:
    """Return ``value`` if it is a valid tag name (``[A-Za-z0-9.-]+``, at most 80 characters).

    Raises :class:`TemplateRefError` naming the problem otherwise.
    """
    if not isinstance(value, str) or not value:
        raise TemplateRefError("tag is empty.")
    if len(value) > TAG_MAX:
        raise TemplateRefError(f"tag {value[:20]!r}... must be at most {TAG_MAX} characters long.")
    if not TAG_RE.match(value):
        raise TemplateRefError(f"tag {value!r} may only contain letters, digits, '.' and '-'.")
    return value


def _check_timestamp(value: str) -> str:
    if not value:
        raise TemplateRefError("timestamp after '@' is empty.")
    m = _TIMESTAMP_RE.match(value)
    if m is None:
        raise TemplateRefError(
            f"timestamp {value!r} must look like YYYY-MM-DD-HH:MM:SS (optionally followed by .N)."
        )
    try:
        datetime.strptime(m.group(1), TIMESTAMP_FORMAT)
    except ValueError:
        raise TemplateRefError(f"timestamp {value!r} is not a valid date and time.") from None
    return value


# ---------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class TemplateRef:
    """A parsed template reference. Construction validates every part (raises :class:`TemplateRefError`).

    ``tag`` None means "the tag ``latest``"; ``timestamp`` None means "the newest version of the tag".
    ``timestamp`` is the part after ``@`` (``2025-01-30-17:14:14`` or ``2025-01-30-17:14:14.2``) and requires
    a ``tag``. ``str(ref)`` gives the canonical form.
    """

    template_id: str
    tag: str | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        check_template_id(self.template_id)
        if self.tag is not None:
            check_tag(self.tag)
        if self.timestamp is not None:
            if self.tag is None:
                raise TemplateRefError("a timestamp needs a tag: use 'name:tag@timestamp'.")
            _check_timestamp(self.timestamp)

    @property
    def effective_tag(self) -> str:
        """The tag this reference selects (``latest`` when none was given)."""
        return self.tag if self.tag is not None else DEFAULT_TAG

    @property
    def tag_timestamp(self) -> str | None:
        """``tag@timestamp`` for a pinned reference, else None."""
        return f"{self.tag}@{self.timestamp}" if self.timestamp is not None else None

    @property
    def is_pinned(self) -> bool:
        return self.timestamp is not None

    def __str__(self) -> str:
        out = self.template_id
        if self.tag is not None:
            out += f":{self.tag}"
        if self.timestamp is not None:
            out += f"@{self.timestamp}"
        return out


def parse_template_ref(s: str) -> TemplateRef:
    """Parse ``name``, ``name:tag`` or ``name:tag@YYYY-MM-DD-HH:MM:SS[.N]``.

    The template id is everything before the first ``:``; the tag runs to the first ``@``; the rest is the
    timestamp. Refused with :class:`TemplateRefError` (the message says what is wrong): a non-string or empty
    reference, surrounding or inner whitespace, ``@`` without ``:``, an empty name / tag / timestamp, an
    invalid template id or tag, a second ``@``, a malformed or impossible timestamp.
    """
    if not isinstance(s, str):
        raise TemplateRefError("template reference must be a string.")
    if not s:
        raise TemplateRefError("template reference is empty.")
    if any(c.isspace() for c in s):
        raise TemplateRefError(f"template reference {s!r} must not contain whitespace.")
    if "@" in s and (":" not in s or s.index("@") < s.index(":")):
        # '@' without a ':' before it (the timestamp itself contains ':').
        raise TemplateRefError(
            f"template reference {s!r}: a timestamp ('@...') needs a tag; use 'name:tag@timestamp'."
        )
    if ":" not in s:
        return TemplateRef(_with_context(s, check_template_id)(s))
    name, rest = s.split(":", 1)
    if not name:
        raise TemplateRefError(f"template reference {s!r}: the template name before ':' is empty.")
    check = _with_context(s, check_template_id)
    check(name)
    if "@" in rest:
        tag, timestamp = rest.split("@", 1)
        if not tag:
            raise TemplateRefError(f"template reference {s!r}: the tag between ':' and '@' is empty.")
        if "@" in timestamp:
            raise TemplateRefError(f"template reference {s!r} contains more than one '@'.")
        _with_context(s, check_tag)(tag)
        _with_context(s, _check_timestamp)(timestamp)
        return TemplateRef(name, tag, timestamp)
    if not rest:
        raise TemplateRefError(f"template reference {s!r}: the tag after ':' is empty.")
    _with_context(s, check_tag)(rest)
    return TemplateRef(name, rest)


def _with_context(ref: str, check: Callable[[str], str]) -> Callable[[str], str]:
    def wrapped(value: str) -> str:
        try:
            return check(value)
        except TemplateRefError as e:
            raise TemplateRefError(f"template reference {ref!r}: {e}") from None

    return wrapped


# ---------------------------------------------------------------------------------- tag_timestamp


def format_tag_timestamp(tag: str, created: datetime, existing: Iterable[str]) -> str:
    """The ``tag_timestamp`` for a new version of ``tag`` created at ``created``.

    ``created`` is converted to UTC (a naive datetime is taken as UTC). ``existing`` holds the tag_timestamps
    already used **in the same template** (other templates do not matter: lookups are always scoped to one
    template). The result is ``<tag>@YYYY-MM-DD-HH:MM:SS``, or, when that is taken because another version of
    the tag was created in the same second, the same with the smallest free suffix ``.2``, ``.3``, …
    """
    check_tag(tag)
    if created.tzinfo is not None:
        created = created.astimezone(UTC)
    base = f"{tag}@{created.strftime(TIMESTAMP_FORMAT)}"
    taken = set(existing)
    if base not in taken:
        return base
    n = 2
    while f"{base}.{n}" in taken:
        n += 1
    return f"{base}.{n}"


def parse_tag_timestamp(tag_timestamp: str) -> tuple[str, datetime, int]:
    """Split ``tag@YYYY-MM-DD-HH:MM:SS[.N]`` into ``(tag, created second as aware UTC datetime, N)``.

    ``N`` is 1 for a timestamp without suffix. Raises :class:`TemplateRefError` on malformed input.
    """
    if not isinstance(tag_timestamp, str) or "@" not in tag_timestamp:
        raise TemplateRefError(f"tag_timestamp {tag_timestamp!r} must look like 'tag@YYYY-MM-DD-HH:MM:SS'.")
    tag, timestamp = tag_timestamp.split("@", 1)
    check_tag(tag)
    _check_timestamp(timestamp)
    m = _TIMESTAMP_RE.match(timestamp)
    assert m is not None
    when = datetime.strptime(m.group(1), TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    return tag, when, int(m.group(2) or 1)


def tag_timestamp_sort_key(tag_timestamp: str) -> tuple[datetime, int]:
    """Sort key ordering versions of one tag oldest → newest (the second, then the same-second suffix).

    Use it to break ties between versions whose ``creation_ts`` is equal (e.g. under an injected clock).
    """
    _, when, seq = parse_tag_timestamp(tag_timestamp)
    return when, seq


# ---------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class TagRecord:
    """One stored version of a template tag, as the store hands it to :func:`resolve_chain`.

    ``tag_timestamp`` is the full ``tag@timestamp`` string; ``pod_definition`` is the definition as its author
    set it (only the fields they sent — unset fields must be absent or None so that they never override).
    """

    template_id: str
    tag: str
    tag_timestamp: str
    creation_ts: datetime
    pod_definition: dict[str, Any]


#: ``lookup(template_id, tag, timestamp)``: the version of a tag **of that template only**. ``tag`` None means
#: the tag ``latest``; ``timestamp`` None means the newest version of the tag (by creation_ts, ties broken by
#: :func:`tag_timestamp_sort_key`), otherwise the version whose tag_timestamp is ``f"{tag}@{timestamp}"``.
#: Returns None when there is no such template, tag or version (or the caller may not see it).
Lookup = Callable[[str, str | None, str | None], TagRecord | None]


def pin(record: TagRecord) -> str:
    """The canonical pinned reference of ``record``: ``template_id:tag@timestamp`` (stored on a pod)."""
    tag, _, _ = parse_tag_timestamp(record.tag_timestamp)
    timestamp = record.tag_timestamp.split("@", 1)[1]
    return str(TemplateRef(record.template_id, tag, timestamp))


def unpin(s: str) -> str:
    """Drop the ``@timestamp`` part of a reference (``mongo:8@2025-…`` → ``mongo:8``; others unchanged).

    Used by ``restart_pod?grab_latest_template_tag=true``: resolving the result selects the newest version of
    the same tag. Raises :class:`TemplateRefError` on a malformed reference.
    """
    ref = parse_template_ref(s)
    return str(TemplateRef(ref.template_id, ref.tag))


def resolve_chain(
    ref: TemplateRef | str,
    lookup: Lookup,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    template_exists: Callable[[str], bool] | None = None,
    outer: Iterable[str] = (),
) -> list[TagRecord]:
    """Resolve ``ref`` (a :class:`TemplateRef` or a string to parse) and every template its definitions chain
    to, nearest first.

    Each level is looked up with ``lookup(template_id, tag, timestamp)`` taken from that level's reference
    (see :data:`Lookup`; the lookup is always scoped to the template named). A level's
    ``pod_definition["template"]`` (when non-empty) is the next reference; references inside stored
    definitions are resolved as written (an unpinned one follows the newest version at resolution time).

    A loop is keyed on the full ``name:tag@timestamp`` of each level, as the original service does: a tag may
    chain to another tag (or an older version of the same tag) of its own template, e.g. ``X:recursive`` →
    ``X:fastapi``; only reaching the same version twice is a loop.

    ``outer`` names the references (``template_id[:tag]``, a missing tag meaning ``latest``) of tag versions
    that sit above ``ref`` but are not stored yet — the tag a new version is being added to, or that
    ``save_pod_as_template_tag`` writes — so that a chain leading back to them is refused before it is stored:
    a level referring to that template and tag *without* a timestamp would resolve to the new version. They
    count towards the depth.

    Raises:
        TemplateNotFound: a level does not exist; the message names the template and tag (and, when
            ``template_exists`` is given, says whether the template itself is missing) and which tag referred
            to it.
        TemplateLoop: the same tag version appears twice (``outer`` included); the message shows the chain.
        TemplateChainTooDeep: more than ``max_depth`` levels (``outer`` included).
        TemplateRefError: a stored definition holds a malformed reference.
        RuntimeError: ``lookup`` returned a record of another template or tag (a bug in the store).
    """
    if isinstance(ref, str):
        ref = parse_template_ref(ref)
    chain: list[TagRecord] = []
    path: list[str] = list(outer)
    pending = {(r.template_id, r.effective_tag) for r in map(parse_template_ref, path)}
    seen: set[str] = set()  # pinned name:tag@timestamp of every level resolved so far
    current: TemplateRef | None = ref
    while current is not None:
        if current.timestamp is None and (current.template_id, current.effective_tag) in pending:
            raise _loop(path, current)
        if len(path) >= max_depth:
            shown = [*path, str(current)]
            raise TemplateChainTooDeep(
                f"template chain is deeper than {max_depth} levels: {' -> '.join(shown)}.", shown
            )
        record = lookup(current.template_id, current.tag, current.timestamp)
        referrer = pin(chain[-1]) if chain else None
        if record is None:
            raise TemplateNotFound(_not_found_message(current, template_exists, referrer), current)
        _check_record(current, record)
        if pin(record) in seen:
            raise _loop(path, current)
        chain.append(record)
        seen.add(pin(record))
        path.append(pin(record))
        parent = record.pod_definition.get("template") if record.pod_definition else None
        if parent is None or parent == "":
            break
        try:
            current = parse_template_ref(parent)
        except TemplateRefError as e:
            raise TemplateRefError(f"template tag {pin(record)} refers to an invalid template: {e}") from None
    return chain


def _loop(path: list[str], current: TemplateRef) -> TemplateLoop:
    shown = [*path, str(current)]
    return TemplateLoop(
        f"template loop: template {current.template_id!r} appears twice in the chain {' -> '.join(shown)}.", shown
    )


def _not_found_message(
    ref: TemplateRef, template_exists: Callable[[str], bool] | None, referrer: str | None
) -> str:
    by = f" (referenced by template tag {referrer})" if referrer else ""
    if template_exists is not None and not template_exists(ref.template_id):
        return f"template {ref.template_id!r} not found{by}."
    if ref.timestamp is not None:
        what = f"template {ref.template_id!r} has no tag version {ref.tag_timestamp!r}"
    else:
        what = f"template {ref.template_id!r} has no tag {ref.effective_tag!r}"
    if template_exists is None:
        what += " (or the template does not exist)"
    return what + by + "."


def _check_record(ref: TemplateRef, record: TagRecord) -> None:
    if record.template_id != ref.template_id:
        raise RuntimeError(
            f"template lookup for {str(ref)!r} returned a tag of template {record.template_id!r}."
        )
    if record.tag != ref.effective_tag or not record.tag_timestamp.startswith(f"{ref.effective_tag}@"):
        raise RuntimeError(f"template lookup for {str(ref)!r} returned tag {record.tag_timestamp!r}.")
    if ref.tag_timestamp is not None and record.tag_timestamp != ref.tag_timestamp:
        raise RuntimeError(f"template lookup for {str(ref)!r} returned version {record.tag_timestamp!r}.")


# ---------------------------------------------------------------------------------- user-set fields


def user_set_fields(request_body: Mapping[str, Any]) -> set[str]:
    """The user-set entries of a create (or update) request body, as :func:`merge_pod` expects them.

    ``request_body`` is what the client sent (e.g. ``model.model_dump(exclude_unset=True)``). For each key
    that is a pod-definition field (:data:`DEFINITION_FIELDS`; ``pod_id``, ``status_requested`` and unknown
    keys are ignored):

    - ``resources`` expands to ``resources.<sub>`` for each sub-field sent (no bare ``resources`` entry; a
      null or empty ``resources`` sets nothing);
    - ``networking`` gives ``networking``, plus ``networking.<key>`` for each stanza and
      ``networking.<key>.<field>`` for each stanza field sent;
    - any other field gives its name (even when its value is null; :func:`merge_pod` treats a null user
      value as "not given").
    """
    out: set[str] = set()
    for field, value in request_body.items():
        if field not in DEFINITION_FIELDS:
            continue
        if field == "resources":
            if isinstance(value, Mapping):
                out.update(f"resources.{sub}" for sub in value)
            continue
        out.add(field)
        if field == "networking" and isinstance(value, Mapping):
            for key, stanza in value.items():
                out.add(f"networking.{key}")
                if isinstance(stanza, Mapping):
                    out.update(f"networking.{key}.{name}" for name in stanza)
    return out


def update_user_set(previous: Iterable[str], request_body: Mapping[str, Any]) -> set[str]:
    """The user-set entries after an update (PUT) that sent ``request_body``.

    An update replaces each field it sends as a whole, so every previous entry of a sent field (``f`` and
    ``f.…``) is dropped before the entries of the body are added: after ``PUT {"resources": {"cpu_limit":
    3000}}`` only ``resources.cpu_limit`` is user-set (the other sub-fields fall back to the templates and
    defaults), and never a bare ``resources`` that would hide template values (Tapis bug, behaviour §6.11).
    """
    sent = {f for f in request_body if f in DEFINITION_FIELDS}
    kept = {e for e in previous if e.split(".", 1)[0] not in sent}
    return kept | user_set_fields(request_body)


# ---------------------------------------------------------------------------------- merge


def _is_set(field: str, value: Any) -> bool:
    if value is None:
        return False
    return not (value == "" and field in _EMPTY_MEANS_UNSET)


def _stanza_fields(user_set: set[str], key: str, stanza: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the pod's own stanza ``key`` that the user set.

    When ``user_set`` has ``networking.<key>`` / ``networking.<key>.<field>`` entries, only the named fields
    count; when it has none for this key (a caller that records only ``networking``), every field present in
    the stored stanza counts. ``url`` never counts (the service generates it).
    """
    prefix = f"networking.{key}"
    named = {e[len(prefix) + 1 :] for e in user_set if e.startswith(prefix + ".")}
    granular = bool(named) or prefix in user_set
    return {
        k: copy.deepcopy(v)
        for k, v in stanza.items()
        if k != "url" and v is not None and (not granular or k in named)
    }


def _env_flag_false(env: Mapping[str, Any] | None, name: str) -> bool:
    return bool(env) and str(env.get(name, "")).strip().lower() == "false"


def merge_pod(
    pod_fields: Mapping[str, Any],
    user_set: set[str],
    chain: list[dict[str, Any]],
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """The derived pod: ``pod_fields`` merged with its template chain and the defaults.

    Arguments:
        pod_fields: the pod as stored (any keys; those that are not pod-definition fields, such as ``pod_id``
            or ``status``, are copied to the result unchanged).
        user_set: the pod's user-set entries (:func:`user_set_fields` / :func:`update_user_set`). Values of
            definition fields that are not user-set are **ignored** — they are stale or model defaults.
        chain: the templates' ``pod_definition`` dicts, **nearest first** (``[r.pod_definition for r in
            resolve_chain(...)]``); ``[]`` for a pod without a template.
        defaults: the value of a field when neither the user nor a template gives one (usually
            :data:`POD_DEFAULTS`, with the site's resource defaults). A field absent here and given by nobody
            is left out of the result, so the pod model's own default applies.

    Precedence is **user-set pod field > nearest template > deeper templates > defaults**. A value counts as
    "given" when it is not None; for ``image``, ``compute_queue`` and ``template`` the empty string also means
    "not given" (the spec's "none" value). An empty list (``command: []``) is given.

    - Scalars and lists (:data:`SCALAR_FIELDS`: image, description, command, arguments, compute_queue,
      time_to_stop_default, time_to_stop_instance): the first given value in that order, as a whole.
    - ``resources``: per sub-field, in the same order (user-set sub-fields are the ``resources.<sub>``
      entries; a bare ``resources`` entry marks every sub-field of the stored value as user-set). The
      defaults' ``resources`` dict is the bottom layer.
    - ``environment_variables``: per variable; deeper templates first, nearer ones override, the pod's own
      variables (if user-set) last. ``_TAPIS_INTERNAL_USE_TEMPLATE_ENVS=false`` in the pod's own variables
      drops every template variable.
    - ``volume_mounts``: per mount key, in the same order; a mount is replaced as a whole (its type,
      mount_path and sub_path belong together). ``_TAPIS_INTERNAL_USE_TEMPLATE_VOLUMES=false`` in the pod's
      own variables drops every template mount.
    - ``networking``: per stanza key, in the same order, and **field by field within a stanza**: a nearer
      stanza's fields are laid over the deeper stanza of the same key, so a template can set
      ``tapis_auth`` and a user override only the ``port``. For templates the fields laid over are those
      present in the stored definition (store definitions with unset fields left out); for the pod, those its
      user-set entries name (see :func:`user_set_fields`). ``url`` is never taken from the pod (the caller
      recomputes URLs from the merged stanzas). Fields nobody gives are filled by the Networking model later.
    - For these three keyed fields, a None value at a nearer level removes the key inherited from deeper
      levels, and the defaults apply only when no level gives a non-empty value (so a template that defines
      only a ``bolt`` stanza does not also get the default ``http:5000`` stanza). A user who sets the field
      to ``{}`` with no templates gets ``{}``.
    - ``template``: the pod's own (pinned) template string, unchanged.

    Inputs are not modified; the result shares no mutable objects with them.
    """
    result: dict[str, Any] = copy.deepcopy(dict(pod_fields))
    deepest_first = [d or {} for d in reversed(chain)]

    def own(field: str) -> Any:
        return pod_fields.get(field) if field in user_set else None

    for field in SCALAR_FIELDS:
        candidates = [own(field), *(d.get(field) for d in reversed(deepest_first))]
        value = next((v for v in candidates if _is_set(field, v)), None)
        if value is not None:
            result[field] = copy.deepcopy(value)
        elif field in defaults:
            result[field] = copy.deepcopy(defaults[field])
        else:
            result.pop(field, None)

    result["resources"] = _merge_resources(pod_fields, user_set, deepest_first, defaults)
    if not result["resources"] and "resources" not in defaults:
        del result["resources"]

    own_env = own("environment_variables")
    use_template_env = not _env_flag_false(own_env, USE_TEMPLATE_ENVS_VAR)
    use_template_volumes = not _env_flag_false(own_env, USE_TEMPLATE_VOLUMES_VAR)
    for field in KEYED_FIELDS:
        use_templates = {
            "environment_variables": use_template_env,
            "volume_mounts": use_template_volumes,
        }.get(field, True)
        layers = [d.get(field) for d in deepest_first] if use_templates else []
        template_layers = [layer for layer in layers if layer]
        own_value = own(field)
        if own_value is None and not template_layers:
            if field in defaults:
                result[field] = copy.deepcopy(defaults[field])
            else:
                result.pop(field, None)
            continue
        merged: dict[str, Any] = {}
        for layer in template_layers:
            _overlay(field, merged, layer)
        if own_value is not None:
            if field == "networking":
                own_value = {
                    key: (None if stanza is None else _stanza_fields(user_set, key, stanza))
                    for key, stanza in own_value.items()
                }
            _overlay(field, merged, own_value)
        result[field] = merged

    result["template"] = pod_fields.get("template") or ""
    return result


def _overlay(field: str, merged: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if value is None:
            merged.pop(key, None)
        elif field == "networking" and isinstance(value, Mapping):
            stanza = merged.get(key) or {}
            stanza.update({k: copy.deepcopy(v) for k, v in value.items() if v is not None})
            merged[key] = stanza
        else:
            merged[key] = copy.deepcopy(value)


def _merge_resources(
    pod_fields: Mapping[str, Any],
    user_set: set[str],
    deepest_first: list[dict[str, Any]],
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in (defaults.get("resources") or {}).items() if v is not None}
    for layer in deepest_first:
        merged.update({k: v for k, v in (layer.get("resources") or {}).items() if v is not None})
    own = pod_fields.get("resources") or {}
    whole = "resources" in user_set
    merged.update({k: v for k, v in own.items() if v is not None and (whole or f"resources.{k}" in user_set)})
    return copy.deepcopy(merged)


# ---------------------------------------------------------------------------------- save as tag


def definition_from_pod(pod_fields: Mapping[str, Any], user_set: set[str]) -> dict[str, Any]:
    """The pod's own user-set fields as a template tag ``pod_definition`` (for ``save_pod_as_template_tag``).

    Contains only pod-definition fields (:data:`DEFINITION_FIELDS`) — never ``pod_id``, status fields,
    timestamps or other bookkeeping — and of them only those the user set and that hold a given value (see
    :func:`merge_pod`): ``resources`` only its user-set sub-fields, ``networking`` stanzas only their user-set
    fields and never the generated ``url``. ``template`` is the pod's (pinned) template string whenever it is
    non-empty, so the new tag chains to exactly the version the pod was built on (the caller must refuse to
    save into that same template: use ``resolve_chain(..., outer=[target_template_id])``). Values are copies.
    """
    out: dict[str, Any] = {}
    for field in DEFINITION_FIELDS:
        value = pod_fields.get(field)
        if field == "template":
            if _is_set(field, value):
                out[field] = value
            continue
        if field == "resources":
            whole = "resources" in user_set
            subs = {
                k: copy.deepcopy(v)
                for k, v in (value or {}).items()
                if v is not None and (whole or f"resources.{k}" in user_set)
            }
            if subs:
                out[field] = subs
            continue
        if field not in user_set or not _is_set(field, value):
            continue
        if field == "networking":
            out[field] = {
                key: _stanza_fields(user_set, key, stanza)
                for key, stanza in value.items()
                if stanza is not None
            }
        else:
            out[field] = copy.deepcopy(value)
    return out
