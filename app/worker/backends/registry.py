"""The backends a worker serves, by name (REDLINE_WORKER_BACKENDS, `redline worker --backend`)."""

from __future__ import annotations

from app.services.cluster import BACKENDS, LOCAL, SLURM
from app.settings import Settings
from app.worker.backends import Backend
from app.worker.backends.local import LocalBackend
from app.worker.backends.slurm import SlurmBackend


def backend_names(text: str) -> list[str]:
    """`"local, slurm"` → ["local", "slurm"]; raises ValueError naming an unknown backend."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"unknown worker backend {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def make_backend(name: str, settings: Settings) -> Backend:
    if name == LOCAL:
        return LocalBackend()
    if name == SLURM:
        return SlurmBackend(settings)
    raise ValueError(f"unknown worker backend {name!r}")
