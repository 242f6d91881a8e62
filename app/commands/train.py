"""`redline train KIND ...`: the training CLI (`python -m training`), run as a subprocess."""

from __future__ import annotations

import click

from app.commands.training_subprocess import run_training


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("kind")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(kind: str, args: tuple[str, ...]) -> None:
    """Run a training kind: same arguments as `python -m training KIND`."""
    raise SystemExit(run_training([kind, *args]))
