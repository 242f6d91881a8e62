"""Where a job runs: the worker backends and a Slurm job's resource request, validated for the job form.

Torch-free and database-free: the job form checks a request here, the worker's Slurm backend turns
the stored request into `#SBATCH` lines (app/worker/backends/slurm.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.config import missing_package

LOCAL = "local"
SLURM = "slurm"
BACKENDS = (LOCAL, SLURM)
# Backends whose jobs outlive the worker that started them (a Slurm job runs on without its worker): such
# a job is never failed for its worker's silence; the next worker that serves the backend follows it.
# A local job's processes die with their worker.
OUTLIVE_WORKER = frozenset({SLURM})
# Sharding strategies a job may ask for: the Accelerate config file under training/accelerate/, and the
# package it needs beyond the `train` extra (None: torch has it).
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "training" / "accelerate"
SHARDING = {"fsdp": None, "zero2": "deepspeed", "zero3": "deepspeed"}
MAX_NODES = 64
MAX_GPUS_PER_NODE = 16

# Slurm's own time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
TIME_LIMIT = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,+-]{1,128}$")
SBATCH_OPTION = re.compile(r"^(--[a-z][a-z0-9-]*(=\S.*)?|-[A-Za-z](\s*\S.*)?)$")
# Options the backend sets itself (its log file, its name, the fields above): a line may not move them.
RESERVED_OPTIONS = {
    "--output": "the job's log is written to its folder",
    "-o": "the job's log is written to its folder",
    "--error": "the job's log is written to its folder",
    "-e": "the job's log is written to its folder",
    "--open-mode": "the job's log is written to its folder",
    "--chdir": "the job runs in its folder",
    "-D": "the job runs in its folder",
    "--job-name": "the job is named after its Redline id",
    "-J": "the job is named after its Redline id",
    "--wrap": "the batch script is written by Redline",
    "--nodes": "use the Nodes field",
    "-N": "use the Nodes field",
    "--ntasks-per-node": "one launcher runs on each node",
    "--gpus-per-node": "use the GPUs per node field",
    "--partition": "use the Partition field",
    "-p": "use the Partition field",
    "--time": "use the Time limit field",
    "-t": "use the Time limit field",
    "--account": "use the Account field",
    "-A": "use the Account field",
}


class ClusterOptionError(ValueError):
    """A bad resource request; `errors` maps the form field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class SlurmRequest:
    """What one job asks Slurm for; `sbatch` holds extra option lines (without the `#SBATCH` prefix)."""

    nodes: int = 1
    gpus_per_node: int = 0
    partition: str = ""
    time_limit: str = ""
    account: str = ""
    sbatch: tuple[str, ...] = field(default_factory=tuple)

    def processes_per_node(self, num_processes: int) -> int:
        return max(1, num_processes // self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sbatch": list(self.sbatch)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlurmRequest:
        return cls(
            nodes=int(data.get("nodes", 1)),
            gpus_per_node=int(data.get("gpus_per_node", 0)),
            partition=str(data.get("partition", "")),
            time_limit=str(data.get("time_limit", "")),
            account=str(data.get("account", "")),
            sbatch=tuple(data.get("sbatch", ())),
        )


def option_name(line: str) -> str:
    """`--mem=4G` → `--mem`; `-c 4` → `-c`."""
    return re.split(r"[=\s]", line, maxsplit=1)[0] if line.startswith("--") else line[:2]


def parse_sbatch_lines(text: str | Iterable[str], where: str = "line") -> tuple[str, ...]:
    """Extra `#SBATCH` option lines, one a line (the `#SBATCH` prefix optional, blank lines skipped).

    Raises ValueError naming the first bad line: it must be one option, with no shell in it.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    kept = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("#SBATCH"):
            line = line.removeprefix("#SBATCH").strip()
        if not line:
            continue
        if any(ord(char) < 32 for char in line):
            raise ValueError(f"{where} {number}: control characters are not allowed")
        if not SBATCH_OPTION.match(line):
            raise ValueError(f"{where} {number}: {line!r} is not an sbatch option (like --mem=32G or --qos=high)")
        reason = RESERVED_OPTIONS.get(option_name(line))
        if reason:
            raise ValueError(f"{where} {number}: {option_name(line)} is set by Redline ({reason})")
        kept.append(line)
    return tuple(kept)


def _whole(raw: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"a whole number from {low} to {high}")
    return int(raw)


def parse_slurm_request(form: Mapping[str, str], num_processes: int) -> SlurmRequest:
    """The request from the job form's raw fields (`slurm_nodes`, ...); raises ClusterOptionError."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, low, high, default in (("nodes", 1, MAX_NODES, "1"), ("gpus_per_node", 0, MAX_GPUS_PER_NODE, "0")):
        try:
            values[name] = _whole((form.get(f"slurm_{name}") or default).strip(), low, high)
        except ValueError as exc:
            errors[f"slurm_{name}"] = str(exc)
    for name in ("partition", "account"):
        text = (form.get(f"slurm_{name}") or "").strip()
        if text and not SLURM_NAME.match(text):
            errors[f"slurm_{name}"] = "letters, digits and . , _ + - only"
        values[name] = text
    time_limit = (form.get("slurm_time_limit") or "").strip()
    if time_limit and not TIME_LIMIT.match(time_limit):
        errors["slurm_time_limit"] = "minutes, or Slurm's [D-]HH:MM:SS (e.g. 90, 4:00:00, 2-00:00:00)"
    values["time_limit"] = time_limit
    try:
        values["sbatch"] = parse_sbatch_lines(form.get("slurm_sbatch") or "")
    except ValueError as exc:
        errors["slurm_sbatch"] = str(exc)
    nodes = values.get("nodes")
    if nodes and num_processes % nodes:
        errors["slurm_nodes"] = f"the {num_processes} processes must divide evenly among the nodes"
    if errors:
        raise ClusterOptionError(errors)
    return SlurmRequest(**values)


def sharding_config(name: str) -> Path:
    """The Accelerate config file of a sharding strategy (`fsdp`, `zero2`, `zero3`)."""
    return ACCELERATE_CONFIGS / f"{name}.yaml"


def check_sharding(name: str, num_processes: int) -> str:
    """"" when a job may use the strategy `name` ("" for plain data parallel), else what is wrong.

    Looks for the engine's package without importing it (training.config.missing_package): it comes with
    the `gpu` extra, which machines that only serve the web app or train on CPU never install.
    """
    if not name:
        return ""
    if name not in SHARDING:
        return f"choose one of: {', '.join(SHARDING)}"
    if num_processes < 2:
        return "sharding needs at least 2 processes"
    package = SHARDING[name]
    return missing_package(package) if package else ""


SLURM_FIELDS = ("nodes", "gpus_per_node", "partition", "time_limit", "account", "sbatch")


@dataclass
class PlacementForm:
    """The new-job form's "Where it runs" section, raw as submitted (or restored from a job)."""

    backend: str = LOCAL
    sharding: str = ""
    slurm: dict[str, str] = field(default_factory=dict)  # form name (slurm_nodes, ...) -> raw text

    @classmethod
    def from_form(cls, data: Mapping[str, Any]) -> PlacementForm:
        def text(name: str) -> str:
            value = data.get(name)
            return value.strip() if isinstance(value, str) else ""

        return cls(
            backend=text("backend") or LOCAL,
            sharding=text("sharding"),
            slurm={f"slurm_{name}": text(f"slurm_{name}") for name in SLURM_FIELDS},
        )

    @classmethod
    def from_job(cls, backend: str, sharding: str, request: SlurmRequest) -> PlacementForm:
        raw = {name: str(value) for name, value in request.as_dict().items()}
        raw["sbatch"] = "\n".join(request.sbatch)
        return cls(backend=backend, sharding=sharding, slurm={f"slurm_{name}": raw[name] for name in SLURM_FIELDS})

    def value(self, name: str) -> str:
        return self.slurm.get(name, "")

    def check(self, num_processes: int) -> tuple[SlurmRequest | None, dict[str, str]]:
        """(the Slurm request or None for a local job, errors by form field)."""
        errors: dict[str, str] = {}
        if self.backend not in BACKENDS:
            errors["backend"] = f"choose one of: {', '.join(BACKENDS)}"
        problem = check_sharding(self.sharding, num_processes)
        if problem:
            errors["sharding"] = problem
        request = None
        if self.backend == SLURM:
            try:
                request = parse_slurm_request(self.slurm, num_processes)
            except ClusterOptionError as exc:
                errors.update(exc.errors)
        return request, errors
