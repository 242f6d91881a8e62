"""A researcher sends a job to the real Slurm cluster the suite starts (tests/slurm_cluster.py) from the
dashboard: `redline serve` and `redline worker --backend slurm` processes, real Chromium, real sbatch."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect
from test_jobs_browser import REDLINE, dataset, log_in, page, server, start, start_token_rm, stop

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.slurm]
__all__ = ["dataset", "page", "server"]  # fixtures, imported for this module's tests


@pytest.fixture
def slurm_worker(slurm_cluster, worker_process_env, tmp_path) -> Iterator[subprocess.Popen]:
    env = {**worker_process_env, "SLURM_CONF": str(slurm_cluster.conf), "REDLINE_SLURM_POLL_S": "0.5"}
    proc = start([REDLINE, "worker", "--backend", "slurm"], env, tmp_path / "slurm-worker.log")
    yield proc
    stop(proc)


def test_a_job_sent_to_slurm_from_the_dashboard_shows_its_curves(page, server, slurm_worker, dataset,
                                                                 tiny_model_path, slurm_cluster):
    log_in(page, server)
    start_token_rm(page, server, dataset, tiny_model_path, name="on the cluster",
                   max_steps="30", logging_steps="1", batch_size="2", val_fraction="0.3")
    page.select_option("select[name=backend]", "slurm")
    page.fill("input[name=slurm_time_limit]", "10")
    page.fill("textarea[name=slurm_sbatch]", "--comment=from-the-dashboard")
    page.click("button:has-text('Start job')")
    expect(page.locator("#job-backend")).to_contain_text("Slurm: 1 node")

    expect(page.locator("#slurm-job")).to_be_visible(timeout=60_000)
    slurm_id = page.locator("#slurm-job code").inner_text()
    page.wait_for_function("Number(document.querySelector('#job-charts').dataset.points) > 0", timeout=120_000)
    expect(page.locator(".chart-box[data-group=Loss] canvas")).to_be_visible()
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    expect(page.locator("#job-log")).to_contain_text(f"submitted as Slurm job {slurm_id}")
    expect(page.locator("#eval-table")).to_contain_text("edit_span_accuracy")

    info = slurm_cluster.run("scontrol", "show", "job", "-o", slurm_id).stdout
    assert "JobState=COMPLETED" in info and "Comment=from-the-dashboard" in info and "TimeLimit=00:10:00" in info
