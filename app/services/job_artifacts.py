"""A job's artifacts on disk: resolving a download safely, streaming a folder as a zip."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from app.errors import NotFound
from app.models import Job
from training.config import RESUME_STATE_FILE

READ_BLOCK = 1 << 20


class ArtifactMissing(NotFound):
    pass


def resolve(job: Job, name: str) -> Path:
    """The path of artifact `name` of `job`: only names the worker recorded, only inside the job's output."""
    if name not in {artifact["name"] for artifact in job.artifacts} or not job.output_dir:
        raise ArtifactMissing(f"job {job.id} has no artifact {name!r}")
    root = Path(job.output_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.exists():
        raise ArtifactMissing(f"artifact {name!r} of job {job.id} is no longer on disk")
    return path


class _Pipe:
    """A write-only file object whose bytes the zip stream hands on as they are written."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.position = 0

    def write(self, data: bytes) -> int:
        self.pending.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data


def is_resume_state(path: Path) -> bool:
    """A checkpoint's optimizer and scheduler state (often larger than the model): kept on disk for
    `resume`, left out of downloads unless asked for."""
    return path.name == RESUME_STATE_FILE


def zip_stream(folder: Path, resume_state: bool = False) -> Iterator[bytes]:
    """The folder as a zip archive, produced piece by piece (model weights are never held in memory);
    without the resume state unless `resume_state`."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        files = (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        for path in sorted(p for p in files if resume_state or not is_resume_state(p)):
            arcname = f"{folder.name}/{path.relative_to(folder)}"
            with path.open("rb") as source, archive.open(arcname, "w", force_zip64=True) as target:
                while block := source.read(READ_BLOCK):
                    target.write(block)
                    yield pipe.take()
            yield pipe.take()
    yield pipe.take()
