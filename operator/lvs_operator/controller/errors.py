"""How the controller describes an API or network error in one line."""

from __future__ import annotations

from kubernetes.aio.client.exceptions import ApiException


def brief(error: BaseException) -> str:
    """Return a one-line description of an API or network error."""
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}"
    return str(error) or type(error).__name__
