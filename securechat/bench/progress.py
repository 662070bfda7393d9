"""A one-line progress bar for long benchmark runs, redrawn in place on a terminal."""

from __future__ import annotations

from typing import TextIO

__all__ = ["ProgressBar", "render"]


def render(done: float, total: float, width: int = 30) -> str:
    """`[#####.....]  50%  400,000/800,000` for `done` of `total` (clamped to 0..100%)."""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}  {done:,.0f}/{total:,.0f}"


class ProgressBar:
    """Call it with (done, total) as often as you like; `finish` ends the line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = False

    def __call__(self, done: float, total: float) -> None:
        self._stream.write("\r" + render(done, total))
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False
