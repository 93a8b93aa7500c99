"""The progress interface: the library reports, a front end (the CLI's progress bar) displays."""
from __future__ import annotations

from typing import Protocol

__all__ = ("ProgressCallback", "report")


class ProgressCallback(Protocol):
    """Called with a short description, the units done so far, and the total (None when unknown)."""

    def __call__(self, description: str, done: int, total: int | None) -> None: ...


def report(progress: ProgressCallback | None, description: str, done: int, total: int | None) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(description, done, total)
