"""The new-job form's hyperparameter fields and their validation: the training config module's own.

`training.config` is torch-free and is the one module of `training` the web app may import (an
import-linter contract in pyproject.toml); its rules decide every value, so a form field gets the
verdict `--set key=value` would get. What is left here is what only an HTML form has: the keys a job
sets itself are not fields, and an unticked checkbox is an absent key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.services import pipeline
from training.config import KINDS, FieldSpec, check_values, config_fields

# Keys the job sets itself: the base model field, the dataset version's export, the job's folder.
JOB_SET_KEYS = frozenset({"model", "data", "output_dir"})


def kinds() -> list[str]:
    """The training CLI's kinds, and the FIGA pipeline (a chain whose first stage is `generate`)."""
    return [*KINDS, pipeline.KIND]


def form_fields(kind: str) -> tuple[FieldSpec, ...]:
    """The hyperparameters a researcher sets for `kind` (everything but the keys the job sets)."""
    return tuple(f for f in config_fields(pipeline.training_kind(kind)) if f.name not in JOB_SET_KEYS)


def validate_hyperparameters(kind: str, form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(config, errors): every field of `kind` typed and checked; `errors` maps field name → message.

    Absent keys take their default, except a checkbox: a browser sends an unticked one as nothing at all,
    so an absent boolean is false. A submitted but empty number is an error.
    """
    fields = form_fields(kind)
    raw = {f.name: form[f.name] for f in fields if f.name in form}
    raw.update({f.name: "false" for f in fields if f.type == "bool" and f.name not in form})
    typed, errors = check_values(pipeline.training_kind(kind), raw)
    config = {f.name: typed.get(f.name, f.default) for f in fields if f.name not in errors}
    return config, errors
