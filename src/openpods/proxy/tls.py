"""TLS material for the proxy: a local CA and a wildcard server certificate, generated on first use.

Files in the TLS directory (created ``0700``):

- ``ca.crt`` / ``ca.key`` (``0600``): the local certificate authority, valid 10 years. Clients trust
  ``ca.crt`` (exported by ``openpods ca-cert``, see :func:`ca_certificate_pem`) to verify every pod URL.
- ``server.crt`` / ``server.key`` (``0600``): the server certificate Traefik presents, for names such as
  ``*.pods.localhost``, ``pods.localhost``, ``localhost`` and ``127.0.0.1``, signed by the CA.

Everything is idempotent: existing files are reused. The server certificate is re-issued when the wanted names
differ from the ones it has, when it expires within :data:`RENEW_BEFORE`, or when it is unreadable, does not
match its key or was not issued by the current CA. The CA is re-created only when it is unreadable or about to
expire (which forces clients to trust the new one). A file lock serialises concurrent callers; files are
written atomically.

A configured certificate/key pair (e.g. from a real CA) replaces the generated material entirely.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CA_VALIDITY",
    "RENEW_BEFORE",
    "SERVER_CERT",
    "SERVER_KEY",
    "SERVER_VALIDITY",
    "TlsMaterial",
    "ca_certificate_pem",
    "default_server_names",
    "ensure_tls_material",
]

log = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
LOCK_FILE = ".lock"

CA_VALIDITY = dt.timedelta(days=3650)
#: 397 days: the longest validity that every TLS client accepts, even for privately trusted roots.
SERVER_VALIDITY = dt.timedelta(days=397)
#: Certificates expiring sooner than this are replaced.
RENEW_BEFORE = dt.timedelta(days=30)
#: Backdating of ``notBefore`` to tolerate small clock differences between machines.
BACKDATE = dt.timedelta(hours=1)

Clock = Callable[[], dt.datetime]

_DNS_RE = re.compile(
    r"(?:\*\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Certificate and key files for Traefik's default TLS store.

    ``ca_file`` is ``None`` when a configured certificate is used. ``fingerprint`` is the SHA-256 of the
    server certificate (hex); it changes whenever the certificate does (useful to make Traefik reload).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None
    generated: bool
    fingerprint: str


def default_server_names(domains: Iterable[str] = ("localhost",)) -> list[str]:
    """Names the generated server certificate covers for pod domains: for ``localhost`` that is
    ``*.pods.localhost``, ``pods.localhost``, ``localhost``, plus ``127.0.0.1`` and ``::1``."""
    names: list[str] = []
    for domain in domains:
        domain = domain.strip().lower().rstrip(".")
        for name in (f"*.pods.{domain}", f"pods.{domain}", domain):
            if name not in names:
                names.append(name)
    for ip in ("127.0.0.1", "::1"):
        if ip not in names:
            names.append(ip)
    return names


def _parse_names(
    names: Iterable[str],
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in names:
        name = raw.strip().lower().rstrip(".")
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if not _DNS_RE.match(name) or len(name) > 253:
                raise ValueError(f"not a DNS name, wildcard or IP address: {raw!r}") from None
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    if not dns and not ips:
        raise ValueError("at least one name is needed for the server certificate")
    return dns, ips


# --- file helpers ------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None:
    """Load a PEM certificate (first of a chain) and key; ``None`` if missing, unreadable or mismatched."""
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, IndexError, TypeError):
        return None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        return None
    return cert, key  # type: ignore[return-value]


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --- generation --------------------------------------------------------------------------------------------


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenPods"),
            # A random suffix keeps the CAs of different installations apart in trust stores.
            x509.NameAttribute(NameOID.COMMON_NAME, f"OpenPods local CA {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    dns: Sequence[str],
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    common = (dns[0] if dns else str(ips[0]))[:64]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _ensure_ca(
    directory: Path, now: dt.datetime
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes, bool]:
    """Load or create the CA (caller holds the lock). Returns (cert, key, created)."""
    pair = _load_pair(directory / CA_CERT, directory / CA_KEY)
    if pair is not None:
        cert, key = pair
        if cert.not_valid_after_utc - now > RENEW_BEFORE:
            return cert, key, False
        log.warning("local CA in %s expires %s: creating a new one", directory, cert.not_valid_after_utc)
    elif (directory / CA_CERT).exists() or (directory / CA_KEY).exists():
        log.warning("local CA in %s is unreadable or does not match its key: creating a new one", directory)
    cert, key = _new_ca(now)
    _write_atomic(directory / CA_KEY, _key_pem(key), 0o600)
    _write_atomic(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("created local CA %s in %s", cert.subject.rfc4514_string(), directory)
    return cert, key, True


def _server_ok(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    dns: Sequence[str],
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: dt.datetime,
) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.InvalidSignature, x509.ExtensionNotFound):
        return False
    if {n.lower() for n in san.get_values_for_type(x509.DNSName)} != set(dns):
        return False
    if set(san.get_values_for_type(x509.IPAddress)) != set(ips):
        return False
    return cert.not_valid_after_utc - now > RENEW_BEFORE and cert.not_valid_before_utc <= now


def ensure_tls_material(
    directory: Path | str,
    names: Iterable[str] | None = None,
    *,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    clock: Clock = _utcnow,
) -> TlsMaterial:
    """Return the certificate/key Traefik should present, generating or renewing them in ``directory``.

    ``names``: DNS names, wildcards (``*.pods.localhost``) and IP addresses for the server certificate
    (default :func:`default_server_names`). ``cert_file``/``key_file``: a configured pair that replaces the
    generated one (both or neither); it is checked to exist and to match, never modified.
    Raises ``ValueError`` for bad names or a configured pair that cannot be used.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a configured TLS certificate needs both cert_file and key_file")
    if cert_file is not None and key_file is not None:
        cert_path, key_path = Path(cert_file), Path(key_file)
        pair = _load_pair(cert_path, key_path)
        if pair is None:
            raise ValueError(
                f"cannot use TLS certificate {cert_path} with key {key_path}: unreadable or mismatched"
            )
        return TlsMaterial(cert_path, key_path, None, False, _fingerprint(pair[0]))

    dns, ips = _parse_names(default_server_names() if names is None else names)
    directory = Path(directory)
    with _locked(directory):
        now = clock()
        ca_cert, ca_key, ca_created = _ensure_ca(directory, now)
        server_cert_path, server_key_path = directory / SERVER_CERT, directory / SERVER_KEY
        pair = None if ca_created else _load_pair(server_cert_path, server_key_path)
        if pair is not None and _server_ok(pair[0], ca_cert, dns, ips, now):
            cert = pair[0]
        else:
            cert, key = _new_server(ca_cert, ca_key, dns, ips, now)
            _write_atomic(server_key_path, _key_pem(key), 0o600)
            _write_atomic(server_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            log.info("issued server certificate for %s in %s", ", ".join([*dns, *map(str, ips)]), directory)
        return TlsMaterial(server_cert_path, server_key_path, directory / CA_CERT, True, _fingerprint(cert))


def ca_certificate_pem(directory: Path | str, *, clock: Clock = _utcnow) -> str:
    """The local CA certificate (PEM) that clients should trust; creates the CA on first use."""
    directory = Path(directory)
    with _locked(directory):
        cert, _key, _created = _ensure_ca(directory, clock())
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
