"""Errors the core raises (domain, services, controllers), free of HTTP.

The API maps each kind to its Tapis envelope status once, in ``api.envelope.install_error_handlers``; a controller
records the message on the pod instead. ``message`` keeps the envelope's shape: a list of ``"<field>: <problem>"``
strings for input the user must fix, a plain string otherwise.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of the core's errors: a message meant for the user."""

    def __init__(self, message: str | list[str]) -> None:
        super().__init__(message if isinstance(message, str) else "; ".join(message))
        self.message = message

    @property
    def text(self) -> str:
        """The message as one line (for a pod's status message or a log)."""
        return self.message if isinstance(self.message, str) else "; ".join(self.message)


class InvalidInput(DomainError):
    """The request's content cannot be accepted as it is (HTTP 400)."""


class PermissionDenied(DomainError):
    """The caller lacks a permission the operation needs (HTTP 403)."""


class NotFoundError(DomainError):
    """A named object does not exist, or the caller may not know that it does (HTTP 404)."""


class ConflictError(DomainError):
    """The object's current state does not allow the operation (HTTP 409)."""


class TooLarge(DomainError):
    """The content exceeds a size limit (HTTP 413)."""
