"""The terminal status line: rewritten in place on a terminal, a plain line now and then otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StatusLine:
    """One line of live status plus notices that scroll above it.

    On a terminal the line is redrawn with ``\\r``; when the stream is a pipe or
    a file (logs, tests) it is written as an ordinary line every ``every_s``.
    """

    def __init__(self, stream: TextIO | None = None, *, every_s: float = 5.0, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self._width = 0
        self._last_plain = -1e9

    def update(self, text: str) -> None:
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_plain >= self.every_s:
            self._last_plain = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def notice(self, text: str) -> None:
        """A message that stays (e.g. "server went away; reconnecting in 2 s")."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the in-place line (before the program exits)."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
