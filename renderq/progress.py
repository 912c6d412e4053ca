"""Terminal output helpers: a one-line progress display redrawn in place, durations, sizes and plain tables, and
`printable`, which every text from a coordinator passes before it reaches the terminal."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Sequence, TextIO

# Re-exported: the CLI's modules take every formatter from here.
from renderq.units import format_bytes as format_bytes
from renderq.units import format_duration as format_duration

# Characters a terminal acts on instead of showing: the C0 controls (ESC starts the escape sequences that retitle a
# window, move the cursor or clear the screen), DEL, the C1 controls (CSI and OSC among them, ESC's 8-bit twins), the
# Unicode line separators, and the bidirectional marks that make text show in another order than it reads (U+202E).
_BIDI_MARKS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSHOWN = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *map(ord, _BIDI_MARKS)]
_ONE_LINE = {code: None for code in _UNSHOWN} | {ord(c): " " for c in "\t\n\r\u2028\u2029"}
_MULTI_LINE = {code: None for code in _UNSHOWN} | {ord("\t"): "\t", ord("\n"): "\n"}
# Fields of a coordinator's answer that hold several lines (a log, a frame's error): they keep their line breaks.
MULTI_LINE_FIELDS = frozenset({"text", "error", "log_tail"})


def printable(text: object, *, multiline: bool = False) -> str:
    """`text` made safe to print: control characters and bidirectional marks removed; line breaks and tabs become
    spaces, or stay with `multiline`. Every text another party could have written goes through this."""
    return str(text).translate(_MULTI_LINE if multiline else _ONE_LINE)


def printable_answer(answer: Any, *, multiline: bool = False) -> Any:
    """A decoded JSON answer with every string in it made printable (the MULTI_LINE_FIELDS keeping their lines)."""
    if isinstance(answer, str):
        return printable(answer, multiline=multiline)
    if isinstance(answer, list):
        return [printable_answer(item) for item in answer]
    if isinstance(answer, dict):
        return {printable(key): printable_answer(value, multiline=key in MULTI_LINE_FIELDS)
                for key, value in answer.items()}
    return answer

# When output goes to a file or pipe, an in-place line would be a mess of carriage returns;
# print a fresh line instead, but only this often.
_PIPE_INTERVAL = 10.0


class ProgressLine:
    """One status line that is redrawn in place on a terminal and printed now and then elsewhere."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._shown = 0
        self._last_text = ""
        self._last_printed = ""
        self._last_print = 0.0

    def update(self, text: str, *, force: bool = False) -> None:
        """Show `text` as the current status."""
        text = printable(text)
        if self.is_tty:
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            text = text[:width]
            padding = " " * max(0, self._shown - len(text))
            self.stream.write("\r" + text + padding)
            self.stream.flush()
            self._shown = len(text)
            return
        now = time.monotonic()
        if text != self._last_printed and (force or now - self._last_print >= _PIPE_INTERVAL):
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = now
            self._last_printed = text
        self._last_text = text

    def finish(self, text: str | None = None) -> None:
        """Leave the line as it is (or show `text` last) and move to a fresh line."""
        if text is not None:
            self.update(text, force=True)
        elif not self.is_tty and self._last_text:
            # The final state is worth a line even if the last one was held back by the interval.
            self.update(self._last_text, force=True)
        if self.is_tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = 0

    def clear(self) -> None:
        """Erase the line (terminal only), e.g. before printing a message in its place."""
        if self.is_tty and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
        self._shown = 0


def bar(fraction: float, width: int = 24) -> str:
    """An ASCII bar such as [#########---------]."""
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def format_time(timestamp: float | None) -> str:
    """A Unix time as local date and time; '-' when missing."""
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def format_frame_list(frames: Sequence[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive frames
    for frame in sorted(set(frames)):
        if runs and frame == runs[-1][1] + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the column indexes in `right` are right-aligned. Cells are made
    printable (one line each)."""
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(row: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[index]) if index in right else cell.ljust(widths[index]) for index, cell in enumerate(row)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(headers))] + [line(row) for row in cells])


class StepTimes:
    """When each step of a command ended, one line each on stderr (`--timings`): where an artist's wait goes.

    Each line reads `timing: STEP at +S s (epoch E)[ DETAIL]`: seconds since the command started and the wall clock,
    so that a benchmark can line the steps up with the coordinator's frame times."""

    def __init__(self, enabled: bool, out: TextIO | None = None) -> None:
        self.enabled = enabled
        self.started = time.time()
        self._out = out

    def mark(self, step: str, detail: str = "") -> None:
        """Note that `step` has just ended."""
        if not self.enabled:
            return
        now = time.time()
        suffix = f" {detail}" if detail else ""
        print(f"timing: {step} at +{now - self.started:.3f} s (epoch {now:.3f}){suffix}", file=self._out or sys.stderr,
              flush=True)
