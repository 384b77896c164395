"""Domain errors: each says what went wrong for people and carries a stable `code`.

The API maps the five kinds to HTTP statuses; the CLI prints the message.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(DomainError):
    code = "not_found"


class ForbiddenError(DomainError):
    code = "forbidden"


class InvalidInputError(DomainError):
    code = "invalid_input"


class ConflictError(DomainError):
    code = "conflict"


class UnavailableError(DomainError):
    """A service the request needs (the broker) cannot be reached; trying again may work."""

    code = "unavailable"
