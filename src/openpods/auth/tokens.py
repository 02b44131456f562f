"""Token issue and verification (RS256 JWTs with Tapis claims), password hashing, secret encryption.

The embedded authenticator signs with a key generated into ``<data_dir>/keys`` on first start. A tenant may
also trust an external issuer: a configured RS256 public key (a Tapis tenant's) or an OIDC JWKS URL.
"""

from __future__ import annotations

import os
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from openpods.config import Settings, TenantSettings

_hasher = PasswordHasher()
# Verifying against this keeps the time of "no such user" equal to "wrong password".
_DUMMY_HASH = _hasher.hash("not-a-real-password")
IAT_MS_CLAIM = "openpods/iat_ms"


class AuthError(Exception):
    """The token is missing, malformed, expired, or not from a trusted issuer (→ 401)."""


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    username: str
    is_admin: bool = False
    # Of the token behind the identity (for revocation checks): issue time in epoch ms, id, expiry (epoch s).
    issued_at_ms: int | None = None
    jti: str | None = None
    expires_at: int | None = None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def random_password(length: int = 30) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def load_or_create_signing_key(keys_dir: Path) -> rsa.RSAPrivateKey:
    path = keys_dir / "jwt-signing-key.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(path, pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def load_or_create_secret(path: Path, factory: Any = None) -> str:
    """A random secret kept in a 0600 file (made on first use)."""
    if not path.exists():
        value = factory() if factory else secrets.token_urlsafe(32)
        _write_private(path, value.encode() if isinstance(value, str) else value)
    return path.read_text().strip()


class SecretBox:
    """Encrypts pod credentials at rest."""

    def __init__(self, keys_dir: Path) -> None:
        key = load_or_create_secret(keys_dir / "secrets.key", lambda: Fernet.generate_key().decode())
        self._fernet = Fernet(key.encode())

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()


def _identity(tenant_id: str, username: str, is_admin: bool, claims: dict[str, Any]) -> Identity:
    iat_ms = claims.get(IAT_MS_CLAIM)
    if not isinstance(iat_ms, int) or isinstance(iat_ms, bool):
        iat = claims.get("iat")
        # Whole seconds only: count the token as issued at the end of its second (a cutoff in that second
        # refuses it).
        iat_ms = int(iat) * 1000 + 999 if isinstance(iat, int | float) and not isinstance(iat, bool) else None
    jti = claims.get("jti")
    exp = claims.get("exp")
    return Identity(tenant_id, username, is_admin, issued_at_ms=iat_ms,
                    jti=jti if isinstance(jti, str) and jti else None,
                    expires_at=int(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None)


class TokenService:
    """Issues tokens for the embedded authenticator and verifies tokens from every trusted issuer."""

    ISSUER_SUFFIX = "/v3/tokens"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._private_key = load_or_create_signing_key(settings.data_dir / "keys")
        self.public_key_pem = (
            self._private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self._jwks_clients: dict[str, jwt.PyJWKClient] = {}

    def issuer(self, tenant_id: str) -> str:
        tenant = self.settings.tenant(tenant_id) or TenantSettings(tenant_id=tenant_id)
        return self.settings.tenant_base_url(tenant) + self.ISSUER_SUFFIX

    def issue(self, tenant_id: str, username: str, *, ttl_sec: int | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Returns tapipy's access_token object: {access_token, expires_in, expires_at, jti}."""
        ttl = ttl_sec or self.settings.token_ttl_sec
        now_ms = int(time.time() * 1000)
        now = now_ms // 1000
        jti = str(uuid.uuid4())
        claims = {
            "iss": self.issuer(tenant_id),
            "sub": f"{username}@{tenant_id}",
            "jti": jti,
            "iat": now,
            # Millisecond issue time: a revocation cutoff then spares tokens issued right after it.
            IAT_MS_CLAIM: now_ms,
            "exp": now + ttl,
            "tapis/tenant_id": tenant_id,
            "tapis/username": username,
            "tapis/token_type": "access",
            "tapis/account_type": "user",
            "tapis/delegation": False,
            **(extra or {}),
        }
        token = jwt.encode(claims, self._private_key, algorithm="RS256")
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + ttl))
        return {"access_token": token, "expires_in": ttl, "expires_at": expires_at, "jti": jti}

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign arbitrary claims with the embedded issuer's key (one-time login codes)."""
        return jwt.encode(claims, self._private_key, algorithm="RS256")

    def verify(self, token: str, *, admin_lookup: Any = None) -> Identity:
        """Checks signature, expiry and tenant. ``admin_lookup(tenant, user) -> bool`` decides site admins
        for tokens of the embedded issuer."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"Invalid token: {exc}") from None
        if header.get("alg") not in ("RS256", "RS384", "RS512", "ES256", "ES384"):
            raise AuthError("Invalid token: unsupported signing algorithm.")
        tenant_id = unverified.get("tapis/tenant_id")
        tenant = self.settings.tenant(tenant_id) if isinstance(tenant_id, str) else None
        # Tokens of the embedded issuer name their tenant; external OIDC tokens are matched by issuer key.
        if tenant is not None and unverified.get("iss") == self.issuer(tenant.tenant_id):
            claims = self._decode(token, self.public_key_pem)
            username = claims.get("tapis/username")
            if not isinstance(username, str) or not username:
                raise AuthError("Invalid token: no tapis/username claim.")
            if claims.get("tapis/token_type", "access") != "access":
                raise AuthError("Invalid token: not an access token.")
            is_admin = bool(admin_lookup(tenant.tenant_id, username)) if admin_lookup else False
            return _identity(tenant.tenant_id, username, is_admin, claims)
        for candidate in self.settings.all_tenants():
            identity = self._verify_external(token, candidate, unverified)
            if identity is not None:
                return identity
        raise AuthError("Invalid token: not issued for a tenant of this service.")

    def _verify_external(self, token: str, tenant: TenantSettings, unverified: dict[str, Any]) -> Identity | None:
        key: Any = None
        if tenant.issuer_public_key or tenant.issuer_public_key_file:
            if unverified.get("tapis/tenant_id") != tenant.tenant_id:
                return None
            key = tenant.issuer_public_key or Path(tenant.issuer_public_key_file).read_text()
            claims = self._decode(token, key)
            username = claims.get("tapis/username")
        elif tenant.jwks_url:
            client = self._jwks_clients.setdefault(tenant.jwks_url, jwt.PyJWKClient(tenant.jwks_url))
            try:
                key = client.get_signing_key_from_jwt(token).key
            except jwt.PyJWTError:
                return None
            claims = self._decode(token, key)
            username = claims.get("tapis/username") or claims.get(tenant.jwks_username_claim)
        else:
            return None
        if not isinstance(username, str) or not username:
            raise AuthError("Invalid token: no username claim.")
        return _identity(tenant.tenant_id, username, username in tenant.admin_users, claims)

    @staticmethod
    def _decode(token: str, key: Any) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key, algorithms=["RS256", "RS384", "RS512", "ES256", "ES384"],
                options={"require": ["exp"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("Token expired.") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"Invalid token: {exc}") from None
