"""The export's error (its own module, so the writers' helpers can raise it)."""

from __future__ import annotations

from ..errors import QRecipeError


class ExportError(QRecipeError):
    """The checkpoint cannot be written in the requested format."""
