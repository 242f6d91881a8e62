"""Incremental readers of files a training run appends to (its log and metrics.jsonl)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

READ_LIMIT = 1 << 20  # bytes per read, so a flood of output is stored in several rounds


class LineTailer:
    """Returns the complete lines appended to a file since the last call."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read(self, *, final: bool = False) -> bytes:
        """New complete lines; with `final`, also a last line without its newline."""
        if not self.path.is_file():
            return b""
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read(READ_LIMIT)
        end = len(data) if final else data.rfind(b"\n") + 1
        if end == 0 and len(data) == READ_LIMIT:
            end = len(data)  # one enormous line: take it in pieces rather than never
        self.offset += end
        return data[:end]


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def as_terminal_shows(text: str) -> str:
    """Each line as a terminal would leave it: the last redraw of a "\r" progress bar, no colour codes."""
    lines = (line.rstrip("\r").rsplit("\r", 1)[-1] for line in ANSI_ESCAPE.sub("", text).split("\n"))
    return "\n".join(lines)


class LogTailer(LineTailer):
    def read_text(self, *, final: bool = False) -> str:
        return as_terminal_shows(self.read(final=final).decode("utf-8", errors="replace"))


class MetricsTailer(LineTailer):
    def read_rows(self, *, final: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """Parsed rows with a "step", and a description of every line that is not one."""
        rows, problems = [], []
        for line in self.read(final=final).splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{self.path.name}: unreadable line ({exc.msg}) skipped")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                problems.append(f"{self.path.name}: line without an integer \"step\" skipped")
                continue
            rows.append(row)
        return rows, problems
