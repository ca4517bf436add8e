"""The one interface through which library code reports progress; the CLI's ui.py draws it.

Library rooms print nothing: they call these four methods on the `Progress` they were given
(or on `NoProgress`, which does nothing), and return their results as data.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

Level = Literal["info", "warning"]


class Progress(Protocol):
    def start(self, total: int, done: int = 0, title: str = "train") -> None:
        """A bar of `total` units begins, `done` of them already done (a resumed run)."""

    def step(self, step: int, record: dict[str, Any]) -> None:
        """`step` units are done; `record` holds the numbers to show beside the bar (loss, tok/s)."""

    def message(self, text: str, level: Level = "info") -> None:
        """One line for the user: what happens, a result, or a warning."""

    def close(self) -> None:
        """The bar ends (messages may still follow)."""


class NoProgress:
    """Progress that shows nothing: the default for library calls and for ranks other than 0."""

    def start(self, total: int, done: int = 0, title: str = "train") -> None:
        pass

    def step(self, step: int, record: dict[str, Any]) -> None:
        pass

    def message(self, text: str, level: Level = "info") -> None:
        pass

    def close(self) -> None:
        pass
