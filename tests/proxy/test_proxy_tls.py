"""Tests of the local CA and server certificate generation (openpods.proxy.tls)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openpods.proxy.tls import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    ca_certificate_pem,
    default_server_names,
    ensure_tls_material,
)

NAMES = ["*.pods.localhost", "pods.localhost", "localhost", "127.0.0.1", "::1"]


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def handshake(tls_dir: Path, server_hostname: str) -> None:
    """A TLS handshake in memory: client trusts only ca.crt and checks the hostname."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_dir / SERVER_CERT, tls_dir / SERVER_KEY)
    client_ctx = ssl.create_default_context(cafile=str(tls_dir / CA_CERT))
    if hasattr(ssl, "VERIFY_X509_STRICT"):
        client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for side, obj in (("c", client), ("s", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not complete")


def test_generates_ca_and_server_cert_with_sans_and_permissions(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    material = ensure_tls_material(tls_dir, NAMES)
    assert material.generated
    assert material.cert_file == tls_dir / SERVER_CERT
    assert material.key_file == tls_dir / SERVER_KEY
    assert material.ca_file == tls_dir / CA_CERT
    for name in (CA_KEY, SERVER_KEY):
        assert stat.S_IMODE((tls_dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(tls_dir.stat().st_mode) & 0o077 == 0

    ca = load_cert(tls_dir / CA_CERT)
    server = load_cert(tls_dir / SERVER_CERT)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*.pods.localhost", "pods.localhost", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert "OpenPods" in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.mark.parametrize(
    "hostname", ["mypod.pods.localhost", "mypod-bolt.pods.localhost", "localhost", "127.0.0.1"]
)
def test_chain_verifies_with_ssl(tmp_path: Path, hostname: str) -> None:
    ensure_tls_material(tmp_path, NAMES)
    handshake(tmp_path, hostname)


def test_wrong_hostname_fails_verification(tmp_path: Path) -> None:
    ensure_tls_material(tmp_path, NAMES)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path, "a.b.pods.localhost")  # wildcards cover one label only
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path, "example.org")


def test_idempotent(tmp_path: Path) -> None:
    first = ensure_tls_material(tmp_path, NAMES)
    contents = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = ensure_tls_material(tmp_path, list(reversed(NAMES)))  # same set of names, other order
    assert second == first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == contents


def test_changed_names_reissue_server_cert_but_keep_ca(tmp_path: Path) -> None:
    first = ensure_tls_material(tmp_path, NAMES)
    ca_before = (tmp_path / CA_CERT).read_bytes()
    second = ensure_tls_material(tmp_path, ["*.pods.example.org", "pods.example.org"])
    assert second.fingerprint != first.fingerprint
    assert (tmp_path / CA_CERT).read_bytes() == ca_before
    san = load_cert(tmp_path / SERVER_CERT).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["*.pods.example.org", "pods.example.org"]
    handshake(tmp_path, "x.pods.example.org")


def test_server_cert_renewed_within_30_days_of_expiry(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    first = ensure_tls_material(tmp_path, NAMES, clock=lambda: now)
    expires = load_cert(tmp_path / SERVER_CERT).not_valid_after_utc
    still_fine = ensure_tls_material(tmp_path, NAMES, clock=lambda: expires - dt.timedelta(days=31))
    assert still_fine.fingerprint == first.fingerprint
    ca_before = (tmp_path / CA_CERT).read_bytes()
    later = expires - dt.timedelta(days=29)
    renewed = ensure_tls_material(tmp_path, NAMES, clock=lambda: later)
    assert renewed.fingerprint != first.fingerprint
    assert load_cert(tmp_path / SERVER_CERT).not_valid_after_utc > expires
    assert (tmp_path / CA_CERT).read_bytes() == ca_before


def test_ca_renewed_near_its_expiry(tmp_path: Path) -> None:
    ensure_tls_material(tmp_path, NAMES)
    ca = load_cert(tmp_path / CA_CERT)
    later = ca.not_valid_after_utc - dt.timedelta(days=10)
    ensure_tls_material(tmp_path, NAMES, clock=lambda: later)
    new_ca = load_cert(tmp_path / CA_CERT)
    assert new_ca.serial_number != ca.serial_number
    load_cert(tmp_path / SERVER_CERT).verify_directly_issued_by(new_ca)


@pytest.mark.parametrize("broken", [SERVER_KEY, SERVER_CERT])
def test_broken_server_files_are_replaced(tmp_path: Path, broken: str) -> None:
    ensure_tls_material(tmp_path, NAMES)
    (tmp_path / broken).write_text("garbage")
    ensure_tls_material(tmp_path, NAMES)
    handshake(tmp_path, "mypod.pods.localhost")


def test_server_cert_from_another_ca_is_replaced(tmp_path: Path) -> None:
    ensure_tls_material(tmp_path, NAMES)
    (tmp_path / CA_CERT).unlink()
    (tmp_path / CA_KEY).unlink()
    ensure_tls_material(tmp_path, NAMES)
    load_cert(tmp_path / SERVER_CERT).verify_directly_issued_by(load_cert(tmp_path / CA_CERT))


def test_ca_certificate_pem(tmp_path: Path) -> None:
    pem = ca_certificate_pem(tmp_path / "fresh")  # creates the CA on first use
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert pem.encode() == (tmp_path / "fresh" / CA_CERT).read_bytes()
    material = ensure_tls_material(tmp_path / "fresh", NAMES)
    assert ca_certificate_pem(tmp_path / "fresh") == pem
    assert material.ca_file is not None and material.ca_file.read_text() == pem


def test_configured_certificate_replaces_generated(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pods.example.org")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "my.crt", tmp_path / "my.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    material = ensure_tls_material(tmp_path / "tls", NAMES, cert_file=cert_file, key_file=key_file)
    assert (material.cert_file, material.key_file, material.ca_file, material.generated) == (
        cert_file,
        key_file,
        None,
        False,
    )
    assert not (tmp_path / "tls").exists()

    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="mismatched"):
        ensure_tls_material(tmp_path / "tls", NAMES, cert_file=cert_file, key_file=other_key)
    with pytest.raises(ValueError):
        ensure_tls_material(tmp_path / "tls", NAMES, cert_file=cert_file)


@pytest.mark.parametrize("bad", [["bad name"], ["*.*.localhost"], ["a_b.localhost"], []])
def test_bad_names_rejected(tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(ValueError):
        ensure_tls_material(tmp_path, bad)


def test_default_server_names() -> None:
    assert default_server_names() == NAMES
    assert default_server_names(["Example.org."]) == [
        "*.pods.example.org",
        "pods.example.org",
        "example.org",
        "127.0.0.1",
        "::1",
    ]


def test_concurrent_callers_share_one_ca(tmp_path: Path) -> None:
    results = []

    def worker() -> None:
        results.append(ensure_tls_material(tmp_path, NAMES))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.fingerprint for r in results}) == 1
    handshake(tmp_path, "mypod.pods.localhost")
