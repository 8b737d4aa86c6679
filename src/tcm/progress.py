"""Progress of a loop on stderr: a tqdm bar on a terminal, plain periodic lines elsewhere.

A stage notebook's kernel writes to a captured stream (papermill passes it on to the terminal of
`dvc repro`), where a bar's carriage returns show nothing useful, so there (and whenever stderr is
not a terminal: a log file, a pipe) the loop prints one line every ``TCM_PROGRESS_SECONDS`` seconds
(default 10), e.g. ``glyphs-ms seed 2 epoch 3/8: step 40/120, loss 0.4123, 812 img/s``.
The label names what runs (run and seed): several stages may write to the same terminal.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
DEFAULT_SECONDS = 10.0


def interval() -> float:
    """Seconds between two progress lines (``TCM_PROGRESS_SECONDS``; 0: a line per step)."""
    try:
        return max(0.0, float(os.environ.get("TCM_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Iterate ``iterable`` with progress shown under ``desc``; :meth:`set_postfix` as tqdm's."""

    def __init__(self, iterable: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
                 unit: str = "step") -> None:
        self.iterable, self.desc, self.enabled, self.unit = iterable, desc, enabled, unit
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.postfix: dict[str, str] = {}
        self.n = 0
        self._bar = None
        if enabled and _terminal():
            from tqdm import tqdm

            self._bar = tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, mininterval=1.0,
                             unit=unit)

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, refresh: bool = False, **values: object) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **values)

    def line(self) -> str:
        count = f"{self.unit} {self.n}/{self.total}" if self.total else f"{self.unit} {self.n}"
        # a rate (img_s: 812) reads as "812 img/s", anything else as "loss 0.4123"
        extra = "".join(f", {v} {k.replace('_', '/')}" if k.endswith("_s") else f", {k} {v}"
                        for k, v in self.postfix.items())
        return f"{self.desc}: {count}{extra}"

    def __iter__(self) -> Iterator[T]:
        if self._bar is not None:
            for item in self._bar:
                self.n += 1
                yield item
            return
        if not self.enabled:
            for item in self.iterable:
                self.n += 1
                yield item
            return
        every, last = interval(), time.monotonic()
        for item in self.iterable:
            yield item  # the step runs (and sets the postfix) before its line is due
            self.n += 1
            now = time.monotonic()
            if now - last >= every and self.n != self.total:  # the last step: the caller's own summary line
                print(self.line(), file=sys.stderr, flush=True)
                last = now
