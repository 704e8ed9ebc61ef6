"""The error a service raises for bad input, and how the API shows it."""

from __future__ import annotations

from typing import Any


class ValidationFailed(Exception):
    """Bad input: the message names what is wrong; nothing was written.

    The API answers it with 422, `code` and whatever `details()` adds to the error body."""

    code = "rejected"

    def details(self) -> dict[str, Any]:
        return {}
