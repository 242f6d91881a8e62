"""The dashboard's figures from real annotations: progress, agreement, histogram, queue health."""

from __future__ import annotations

from factories import next_task, submit

from app.db import session_scope
from app.models import Outcome
from app.services import annotation, dashboard


def _annotate(project, user, text):
    with session_scope() as session:
        lease = next_task(session, project, user).lease
    with session_scope() as session:
        metrics = annotation.EditorMetrics(900, 4000, 12, 1)
        submit(session, lease.id, user, Outcome.EDITED, text, metrics=metrics)


def test_dashboard_figures_and_page(web_client, make_user, make_project, add_items, login_as):
    a, b = make_user("ann_a"), make_user("ann_b")
    make_user("boss", "admin")
    project = make_project(n=2, members=[a, b])
    add_items(project, [("P", "The cat sat on teh mat.")])
    _annotate(project, a, "The cat sat on the mat.")
    _annotate(project, b, "The cat sat on the mat.")
    with session_scope() as session:
        agreement = dashboard.agreement(session, project.id)
        [progress] = dashboard.progress(session, project.id)
        rows = dashboard.annotators(session, project.id)
        histogram = dashboard.edit_rate_histogram(session, project.id)
        health = dashboard.queue_health(session, project.id)
    assert (agreement.pairs, agreement.exact, agreement.kappa) == (1, 1.0, 1.0)
    assert (progress.items, progress.complete, progress.annotations, progress.percent) == (1, 1, 2, 100.0)
    assert {r.username: (r.completed, r.median_active_ms) for r in rows} == {"ann_a": (1, 4000), "ann_b": (1, 4000)}
    assert sum(n for _, n, _ in histogram) == 2 and health.open_items == 0
    login_as(web_client, "boss")
    page = web_client.get(f"/admin/dashboard?project={project.id}")
    assert page.status_code == 200 and 'id="agreement-exact">100.0%' in page.text
