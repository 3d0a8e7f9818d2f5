"""The one progress display of every command (replay, analyze, generate, train-estimator, demo).

On a terminal it is a ``tqdm`` bar on stderr; when stderr is not a terminal (a log file, a pipe,
systemd's journal) it is a plain line every :data:`LINE_INTERVAL_S` seconds instead, so logs get a
heartbeat, not a flood of carriage returns. ``enabled=False`` (``--no-progress``) shows nothing.

Counts are what has been *done* (packets acknowledged by the server, packets applied to the
sketches, packets written, training steps), never what a reader has merely read ahead.
"""
from __future__ import annotations

import sys
import time

#: Seconds between plain progress lines when stderr is not a terminal.
LINE_INTERVAL_S = 10.0


class ProgressBar:
    """``update(n)`` adds ``n`` done units; ``total`` may be None (a count and a rate, no bar).

    ``unit``: what is counted ("pkt", "step"); ``postfix``: extra text after the counts.
    ``enabled``: None shows a bar on a terminal and periodic lines otherwise; True the same;
    False nothing. ``stream``: where to draw (default stderr). ``bar_format``: tqdm's, for the bar.
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "pkt", enabled: bool | None = None,
                 stream=None, interval_s: float | None = None, bar_format: str | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.n = 0
        self.postfix = ""
        self._bar = None
        self._started = time.monotonic()
        self._last_line = self._started
        self.interval_s = LINE_INTERVAL_S if interval_s is None else interval_s
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = "off" if enabled is False else ("bar" if is_tty else "lines")
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream,
                             dynamic_ncols=True, leave=True, smoothing=0.1, bar_format=bar_format)

    # ------------------------------------------------------------------ updates
    def update(self, n: float = 1, postfix: str | None = None) -> None:
        """``n`` more units done; ``postfix`` replaces the text after the counts."""
        self.set(self.n + n, postfix)

    def set(self, done: float, postfix: str | None = None) -> None:
        """Units done so far (absolute)."""
        if postfix is not None:
            self.postfix = postfix
        delta, self.n = done - self.n, done
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(delta)
        elif self.mode == "lines" and time.monotonic() - self._last_line >= self.interval_s:
            self._line()

    def _line(self) -> None:
        self._last_line = now = time.monotonic()
        rate = self.n / max(now - self._started, 1e-9)
        of = f"/{self.total:,.0f}" if self.total else ""
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        extra = f"  {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.n:,.0f}{of} {self.unit}{pct}  {rate:,.0f} {self.unit}/s{extra}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A message above the bar (or its own line) that does not break the bar."""
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Finish the bar (a terminal keeps it; logs get nothing more: the command prints its result)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
