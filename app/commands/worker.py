"""`redline worker`: runs queued training jobs until stopped (SIGTERM / Ctrl+C)."""

from __future__ import annotations

import logging
import signal

import click

from app.db import get_engine
from app.settings import get_settings
from app.worker.loop import Worker


@click.command()
@click.option("--once", is_flag=True, help="Run at most one queued job, then exit.")
def worker(once: bool) -> None:
    """Claim queued jobs and run each as a training subprocess. Start as many as you like."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Worker(get_engine(), get_settings())

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("%s: stopping", signal.Signals(signum).name)
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if once:
        runner.run_once()
    else:
        runner.run_forever()
