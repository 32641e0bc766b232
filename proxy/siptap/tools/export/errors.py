"""The one error `siptap export` raises for what a user can fix."""

from __future__ import annotations

from siptap.errors import SiptapError


class ExportError(SiptapError):
    """An export that cannot be made: no captures, an unknown Call-ID, a bundle in the way."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
