"""Problems found while checking a data set, collected so that one error reports them all."""

from __future__ import annotations

from typing import Iterable

from tcm.data.manifest import DataError

# How many problems a message spells out; the count always covers all of them.
SHOWN_PROBLEMS = 5


class Problems:
    """Collects problems so that one error reports them all: ``what: N problems: first; second; ...``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []
        self.fix = ""  # what to do, after the problems listed

    def add(self, message: str) -> None:
        self.items.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        self.items.extend(messages)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        n = len(self.items)
        if not n:
            return
        shown = "; ".join(self.items[:SHOWN_PROBLEMS])
        more = f"; ... and {n - SHOWN_PROBLEMS} more" if n > SHOWN_PROBLEMS else ""
        more += f". Fix: {self.fix}" if self.fix else ""
        # One line: the CLI prints the message as is, and a multi-line wall of paths helps nobody.
        raise DataError(f"{self.what}: {n} problem{'s' if n != 1 else ''}: {shown}{more}".replace("\n", " "))
