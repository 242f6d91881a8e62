"""The dashboard's figures from real annotations: progress, agreement, histogram, queue health."""

from __future__ import annotations

import pytest
from factories import next_task, submit

from app.db import session_scope
from app.editors import service
from app.editors.service import EditorSettings
from app.models import ModelEditor, Outcome, Project, User
from app.services import annotation, dashboard
from app.services.annotation import Provenance
from app.services.edit_import import EditSource
from app.services.importer import import_records
from labels import analyse_edit, load_tokenizer


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


def test_editor_quality_figures_from_real_edits(web_client, make_user, make_project, add_items, login_as,
                                                 default_tokenizer_path):
    """Per model editor: agreement with people's own edits of the same items (not imports, not edits that
    started from a suggestion), and how people used its suggestions; known numbers from the label engine."""
    a, b = make_user("ann_a"), make_user("ann_b")
    make_user("boss", "admin")
    project = make_project(n=3, members=[a, b])
    other = make_project(name="Other", n=2, members=[a])
    cat, capital = ("P1", "The cat sat on teh mat."), ("P2", "Paris is the capital of Germany.")
    add_items(project, [cat, capital, ("P3", "One two three."), ("P4", "Four five six."), ("P5", "Seven eight.")])
    with session_scope() as session:
        settings = dict(base_url="http://127.0.0.1:9/v1", model="smol-135m")
        smol = service.create_editor(session, EditorSettings(name="smol", **settings), None)
        service.create_editor(session, EditorSettings(name="idle", **settings), None)
        service.join_project(session, smol, project.id)
        model, model_id = session.get(User, smol.user_id), smol.id
    made_by_smol = Provenance(editor_id=model_id, editor_model="smol-135m", prompt_version="v1")

    def work(user, outcome, text="", provenance=annotation.HUMAN, where=project):
        with session_scope() as session:
            lease = next_task(session, session.get(Project, where.id), user).lease
            submit(session, lease.id, user, outcome, text, provenance=provenance)

    def on_suggestion(rate):
        return Provenance(editor_id=model_id, suggestion_used=True, human_vs_suggestion_rate=rate)

    work(model, Outcome.EDITED, "The cat sat on the mat.", made_by_smol)  # item 1
    work(model, Outcome.NO_CHANGE_NEEDED, provenance=made_by_smol)  # item 2: the model saw nothing wrong
    work(a, Outcome.EDITED, "The cat sat on the mat.")  # item 1: as the model
    work(a, Outcome.EDITED, "Paris is the capital of France.")  # item 2: a fix the model missed
    work(a, Outcome.EDITED, "One two three!", on_suggestion(0.0))  # items 3-5 from its suggestions
    work(a, Outcome.EDITED, "Four five six!", on_suggestion(0.0))
    work(a, Outcome.EDITED, "Seven eight!", on_suggestion(0.25))
    work(b, Outcome.EDITED, "The cat sat on a mat.", on_suggestion(0.5))  # item 1, but from a suggestion
    with session_scope() as session:  # an imported edit of item 2 is no person's
        import_records(session, session.get(Project, project.id),
                       [{"prompt": capital[0], "response": capital[1], "edited": "Rome is the capital of Italy."}],
                       filename="x.jsonl", edits=EditSource("vendor"))
    add_items(other, [cat])  # work in another project counts there only
    with session_scope() as session:
        service.join_project(session, session.get(ModelEditor, model_id), other.id)
    work(model, Outcome.EDITED, "The cat sat on the mat.", made_by_smol, where=other)
    work(a, Outcome.EDITED, "The cat sat on a mat.", on_suggestion(0.5), where=other)

    tokenizer = load_tokenizer(str(default_tokenizer_path))
    same_cat = analyse_edit(cat[1], "The cat sat on the mat.", tokenizer).labels.original_labels
    fixed = analyse_edit(capital[1], "Paris is the capital of France.", tokenizer).labels.original_labels
    kept, changed = sum(x == 0 for x in fixed), sum(x != 0 for x in fixed)
    with session_scope() as session:
        smol_row, idle_row = dashboard.editor_quality(session, project.id)[::-1]
        elsewhere = dashboard.editor_quality(session, other.id)
    assert (idle_row.name, idle_row.shared.items, idle_row.suggested, idle_row.unchanged) == ("idle", 0, 0, None)
    assert (smol_row.name, smol_row.model, smol_row.shared.items, smol_row.shared.pairs) == ("smol", "smol-135m", 2, 2)
    assert smol_row.shared.exact == pytest.approx((len(same_cat) + kept) / (len(same_cat) + len(fixed)))
    # Cohen's kappa of changed vs kept: item 1 agrees token by token, item 2 the model kept what the person changed.
    both = sum(x != 0 for x in same_cat)
    total = len(same_cat) + len(fixed)
    observed = (total - changed) / total
    p_model, p_person = both / total, (both + changed) / total
    expected = p_model * p_person + (1 - p_model) * (1 - p_person)
    assert smol_row.shared.kappa == pytest.approx((observed - expected) / (1 - expected))
    assert (smol_row.suggested, smol_row.unchanged) == (4, 0.5)
    assert smol_row.mean_rate_on_suggestion == pytest.approx(0.1875)
    assert [(row.name, row.shared.items, row.suggested) for row in elsewhere] == [("idle", 0, 0), ("smol", 0, 1)]

    login_as(web_client, "boss")
    page = web_client.get(f"/admin/dashboard?project={project.id}")
    assert page.status_code == 200 and 'id="editor-quality"' in page.text
    assert "<td class=\"num\">4</td><td class=\"num\">50.0%</td><td class=\"num\">18.8%</td>" in page.text
