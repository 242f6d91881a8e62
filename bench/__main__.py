"""Run benchmarks by name: `python -m bench labels server`; no argument runs every benchmark."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import bench


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules([str(Path(bench.__file__).parent)])
        if m.name not in {"common", "__main__"} and not m.name.startswith("_")  # _x: helpers
    )


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}")
        return 2
    for name in names:
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
