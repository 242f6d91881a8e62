"""The new-job form's fields and their validation, from the training config dataclasses.

The web app never imports `training` (it would pull in torch): the schema comes from the subprocess
`python -m training schema`, read once per process.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.commands.training_subprocess import training_command
from app.settings import get_settings

# Keys the job sets itself: the base model field, the dataset version's export, the job's folder.
JOB_SET_KEYS = frozenset({"model", "data", "output_dir"})
BOOL_TRUE = frozenset({"true", "on", "1", "yes"})


class SchemaUnavailable(RuntimeError):
    """`python -m training schema` failed: the training module is not installed or broken."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # "int" | "float" | "bool" | "str"
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> FieldSpec:
        choices = entry.get("choices")
        return cls(
            name=entry["name"],
            type=entry["type"],
            default=entry.get("default"),
            help=entry.get("help", ""),
            min=entry.get("min"),
            max=entry.get("max"),
            choices=tuple(choices) if choices else None,
        )

    @property
    def input_type(self) -> str:
        return {"int": "number", "float": "number", "bool": "checkbox"}.get(self.type, "text")

    @property
    def step(self) -> str:
        return "1" if self.type == "int" else "any"


@lru_cache(maxsize=1)
def training_schema() -> dict[str, tuple[FieldSpec, ...]]:
    """{kind: fields} for every training kind, from the training CLI (cached for the process)."""
    try:
        done = subprocess.run(
            training_command(["schema"]),
            capture_output=True,
            text=True,
            timeout=get_settings().training_schema_timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SchemaUnavailable(f"`python -m training schema` could not run: {exc}") from exc
    if done.returncode != 0:
        raise SchemaUnavailable(f"`python -m training schema` failed: {done.stderr.strip()[-2000:]}")
    raw = json.loads(done.stdout)
    return {kind: tuple(FieldSpec.from_json(entry) for entry in fields) for kind, fields in raw.items()}


def kinds() -> list[str]:
    return list(training_schema())


def form_fields(kind: str) -> tuple[FieldSpec, ...]:
    """The hyperparameters a researcher sets for `kind` (everything but the keys the job sets)."""
    return tuple(f for f in training_schema()[kind] if f.name not in JOB_SET_KEYS)


def _parse(spec: FieldSpec, raw: str | None) -> Any:
    """The typed value of one submitted field; raises ValueError with a message for the user."""
    if spec.type == "bool":
        return (raw or "").strip().lower() in BOOL_TRUE
    text = (raw or "").strip()
    if spec.type == "int":
        if text == "":
            raise ValueError("a whole number is required")
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if spec.type == "float":
        if text == "":
            raise ValueError("a number is required")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    return text


def _check_bounds(spec: FieldSpec, value: Any) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"must be one of: {', '.join(spec.choices)}")
    if spec.min is not None and value < spec.min:
        raise ValueError(f"must be at least {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ValueError(f"must be at most {spec.max:g}")


def validate_hyperparameters(kind: str, form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(config, errors): every field of `kind` typed and checked; `errors` maps field name → message.

    Absent keys take their default; a submitted but empty number is an error.
    """
    config: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for spec in form_fields(kind):
        if spec.name not in form and spec.type != "bool":
            # Not submitted at all (a client that sets only some keys): the default. A browser always
            # sends every text field, and an unticked checkbox is exactly an absent one.
            config[spec.name] = spec.default
            continue
        try:
            value = _parse(spec, form.get(spec.name))
            _check_bounds(spec, value)
        except ValueError as exc:
            errors[spec.name] = str(exc)
            continue
        config[spec.name] = value
    return config, errors
