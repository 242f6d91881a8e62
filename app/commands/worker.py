"""`redline worker`: runs queued training jobs until stopped (SIGTERM / Ctrl+C)."""

from __future__ import annotations

import logging
import signal
import time

import click

from app.db import get_engine
from app.services.cluster import BACKENDS
from app.settings import get_settings
from app.worker.loop import Worker, alive_file


@click.command()
@click.option("--once", is_flag=True, help="Run at most one queued job, then exit.")
@click.option(
    "--check-alive",
    type=float,
    metavar="SECONDS",
    default=None,
    help="Health check: exit 0 if this host's worker loop turned within SECONDS, else 1.",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(BACKENDS),
    help="Run jobs of this backend (repeat for several); default: REDLINE_WORKER_BACKENDS (local).",
)
def worker(once: bool, check_alive: float | None, backends: tuple[str, ...]) -> None:
    """Claim queued jobs and run each as a training subprocess or Slurm job. Start as many as you like."""
    if check_alive is not None:
        path = alive_file(get_settings())
        fresh = path.exists() and time.time() - path.stat().st_mtime <= check_alive
        click.echo(f"{path}: {'alive' if fresh else 'stale or missing'}")
        raise SystemExit(0 if fresh else 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runner = Worker(get_engine(), get_settings(), backends=backends or None)
    except ValueError as exc:  # REDLINE_WORKER_BACKENDS names an unknown backend
        raise click.UsageError(str(exc)) from exc

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("%s: stopping", signal.Signals(signum).name)
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if once:
        runner.run_once()
    else:
        runner.run_forever()
