"""How an import says no: each bad row with its line, and the refusal of the whole import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ValidationFailed

MAX_ERRORS_SHOWN = 100


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based line of a JSONL/CSV file, or row of a dataset
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ImportRefused(ValidationFailed):
    """The import was refused and nothing was written; `errors` says why, row by row."""

    code = "import_refused"

    def __init__(self, errors: Sequence[RowError], message: str = "") -> None:
        self.errors = list(errors)
        shown = "; ".join(str(e) for e in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        super().__init__(message or f"{len(self.errors)} bad rows, nothing imported: {shown}{more}")

    def details(self) -> dict[str, Any]:
        """The rows refused, with their line (1-based position in the file or list)."""
        return {
            "rows": [{"line": e.line, "message": e.message} for e in self.errors[:MAX_ERRORS_SHOWN]]
        }
