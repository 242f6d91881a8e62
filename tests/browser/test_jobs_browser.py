"""The research dashboard in real Chromium, against `redline serve` and `redline worker` processes on the
real Postgres, training a real token-level reward model (a tiny random Llama) from the browser."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from factories import make_corpus
from playwright.sync_api import Page, expect, sync_playwright

from app.db import session_scope
from app.services.datasets import DatasetFilter
from app.services.freeze import create_version
from app.services.users import create_user

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
REDLINE = str(Path(sys.executable).with_name("redline"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def server(worker_process_env, tmp_path) -> Iterator[str]:
    port = free_port()
    proc = start([REDLINE, "serve", "--port", str(port)], worker_process_env, tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"server did not start:\n{(tmp_path / 'server.log').read_text()}")
        time.sleep(0.2)
    yield base
    stop(proc)


@pytest.fixture
def worker(worker_process_env, tmp_path) -> Iterator[subprocess.Popen]:
    proc = start([REDLINE, "worker"], worker_process_env, tmp_path / "worker.log")
    yield proc
    stop(proc)


@pytest.fixture
def dataset(worker_process_env) -> str:
    """A researcher account and a dataset version of edit pairs; returns the version's option label."""
    with session_scope() as session:
        create_user(session, "rita", PASSWORD, "researcher")
        corpus = make_corpus(session)
        flt = DatasetFilter(project_id=corpus["project"].id, review_statuses=["accepted", "pending"])
        version = create_version(session, flt, "capitals and primes", corpus["admin"])
        return f"#{version.id} {version.name} ({version.row_count} rows)"


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Training jobs")


def start_token_rm(page: Page, base: str, dataset: str, model: Path, *, name: str, **params: str) -> None:
    page.goto(f"{base}/jobs/new")
    page.select_option("select[name=kind]", "token-rm")
    page.fill("input[name=name]", name)
    page.select_option("select[name=dataset_version_id]", label=dataset)
    page.fill("input[name=base_model]", str(model))
    for key, value in params.items():
        page.fill(f"input[name={key}]", value)


def chart_points(page: Page) -> int:
    return int(page.get_attribute("#job-charts", "data-points") or 0)


def test_researcher_trains_a_token_rm_watches_it_and_compares_runs(
    page, server, worker, dataset, tiny_model_path, screenshots
):
    log_in(page, server)
    # Enough steps that the run outlasts a few 2-second polls even on a fast, quiet machine.
    start_token_rm(page, server, dataset, tiny_model_path, name="token-rm lr 1e-5",
                   max_steps="400", logging_steps="1", batch_size="2", val_fraction="0.3")
    page.screenshot(path=str(screenshots / "new-job-form.png"), full_page=True)
    # After a full-page screenshot Chromium 156 drops the next mouse click on the page, so this form is
    # sent the other way a user sends one: Enter in its name field.
    page.press("input[name=name]", "Enter")
    expect(page.locator("h1")).to_contain_text("token-rm lr 1e-5")

    # The curve grows while the job runs: points arrive on later polls, not all at once.
    expect(page.locator("#job-live")).to_have_attribute("data-status", "running", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('#job-charts').dataset.points) > 0", timeout=90_000)
    first = chart_points(page)
    expect(page.locator(".chart-box[data-group=Loss] canvas")).to_be_visible()
    # a metric of no known family (the epoch, 0-1) gets its own panel, not the axis of another scale
    expect(page.locator(".chart-box[data-group=epoch] canvas")).to_be_visible()
    page.wait_for_function(
        f"Number(document.querySelector('#job-charts').dataset.points) > {first}", timeout=90_000
    )
    page.screenshot(path=str(screenshots / "running-job.png"), full_page=True)

    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    eval_table = page.locator("#eval-table")
    expect(eval_table).to_contain_text("edit_span_accuracy")
    expect(eval_table).to_contain_text("accuracy")
    expect(page.locator("#artifacts")).to_contain_text("model/ (zip)")
    stored = page.request.get(page.url + "/metrics").json()["points"]
    assert len(stored) > 400  # all 400 steps, several metrics each
    page.wait_for_function(  # every stored point reaches the chart, the last ones included
        f"Number(document.querySelector('#job-charts').dataset.points) === {len(stored)}", timeout=10_000
    )

    start_token_rm(page, server, dataset, tiny_model_path, name="token-rm lr 1e-3",
                   max_steps="40", logging_steps="1", batch_size="2", val_fraction="0.3", learning_rate="1e-3")
    page.click("button:has-text('Start job')")
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=180_000)

    page.goto(f"{server}/jobs")
    for checkbox in page.locator("input[name=ids]").all():
        checkbox.check()
    page.click("button:has-text('Compare selected runs')")
    expect(page.locator("h1")).to_have_text("Compare runs")
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
    expect(page.locator("#compare-eval tbody tr")).to_have_count(2)
    expect(page.locator("#compare-eval")).to_contain_text("edit_span_accuracy")
    page.screenshot(path=str(screenshots / "compare-runs.png"), full_page=True)


def test_researcher_cancels_a_running_job(page, server, worker, dataset, tiny_model_path):
    log_in(page, server)
    start_token_rm(page, server, dataset, tiny_model_path, name="long run", max_steps="100000",
                   logging_steps="1", batch_size="2")
    page.click("button:has-text('Start job')")
    page.wait_for_function("Number(document.querySelector('#job-charts').dataset.points) > 0", timeout=90_000)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel job')")
    expect(page.locator("#job-live")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(page.locator("#job-log")).to_contain_text("cancel requested: sending SIGTERM")
    expect(page.locator("button:has-text('Cancel job')")).to_have_count(0)
