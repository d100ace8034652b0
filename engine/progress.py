"""Progress of a long loop, shown the way the reader of stderr can take it: every loop of the
engine goes through `progress_bar()`.

On a terminal it is a tqdm bar. Anywhere else (a job's log, `make demo > log`) bars would write
a carriage-return line per step into the file, so instead one plain line is printed when the
loop starts, at most every `EVERY_SECONDS` (fixed: 30 s) while it runs, and when it ends, e.g.

    quantize: 30/210 layers (14%), 31s

`enabled=False` (`qrecipe run --no-progress`) shows neither.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
EVERY_SECONDS = 30.0


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Lines:
    """The bar's stand-in off a terminal: the same iterate/update/close."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, every: float,
                 initial: int = 0):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.start, self.closed = initial, time.monotonic(), False
        self.last, self.said = self.start, None
        self._say()

    def _say(self) -> None:
        self.said = self.n
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        units = self.unit + ("es" if self.unit.endswith(("s", "ch", "sh", "x")) else "s")
        print(f"{self.desc}: {self.n}{of} {units}{pct}, {time.monotonic() - self.start:.0f}s", file=sys.stderr,
              flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._say()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.said != self.n:
                self._say()


class Silent:
    def __init__(self, iterable: Iterable | None):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str, unit: str,
             enabled: bool = True, every: float = EVERY_SECONDS, initial: int = 0):
    """Iterate `iterable` (or call .update() `total` times, then .close()) showing progress;
    `initial`: steps already done (a resumed run)."""
    if not enabled:
        return Silent(iterable)
    if stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, initial=initial)
    return Lines(iterable, total, desc, unit, every, initial)
