"""The domain's refusals: one base class that carries the message for the user and the HTTP status.

Services raise a `DomainError` (or a subclass) and never think about responses; the web app answers it in
one place (`app.deps.install_error_handlers`): a full page for a browser, a fragment for htmx, JSON for the
API and other clients. A route catches one only to show a form again beside the user's own input, and
then answers with the error's `status_code`, not one of its own.

No web imports here: the command line and the worker raise and catch the same classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError


class DomainError(Exception):
    """A request that cannot be honoured; `str(error)` says what is wrong and where (field, line)."""

    status_code = 400
    title = "Cannot do that"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class NotFound(DomainError):
    """The thing asked for does not exist, or is not the caller's to see (the two look the same)."""

    status_code = 404
    title = "Not found"


class Forbidden(DomainError):
    status_code = 403
    title = "Forbidden"

    def __init__(self, message: str = "You do not have permission to do this.") -> None:
        super().__init__(message)


class Conflict(DomainError):
    """The request came too late: someone else's change got there first (reload and look again)."""

    status_code = 409


def error_message(error: Mapping[str, Any]) -> str:
    """One pydantic error's message in the validator's own words: pydantic prefixes a raised ValueError's message
    with "Value error, " (the error itself is in the error's context)."""
    cause = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
    return str(cause) if cause is not None else error["msg"]


def validation_messages(exc: ValidationError, prefix: str = "") -> list[str]:
    """A form's or filter's validation errors as `field: message`, in the model's own words."""
    return [f"{prefix + '.'.join(map(str, error['loc'])) if error['loc'] else 'filter'}: {error_message(error)}"
            for error in exc.errors()]
