"""The tallies ledger (migration 0018, app/services/tallies.py): the counts the triggers keep equal the counts of the
rows themselves after imports, submits, updates and deletes, on SQLite and Postgres; folding keeps them."""

from __future__ import annotations

from collections import Counter

from factories import make_corpus, make_edit, make_item, make_project
from sqlalchemy import delete, func, select, text, update

from app.db import engine_for, session_scope
from app.models import Edit, Item, ItemStatus, Outcome, Tally
from app.services import dashboard, tallies


def _direct(session) -> dict[int, Counter[str]]:
    """The same counts, counted from the items and edits (what the dashboard did before the ledger)."""
    found: dict[int, Counter[str]] = {}
    for project, status, completed in session.execute(select(Item.project_id, Item.status, Item.completed_count)):
        counts = found.setdefault(project, Counter())
        counts["items"] += 1
        counts["complete"] += status == ItemStatus.COMPLETE
        counts["open"] += status == ItemStatus.OPEN
        counts["annotations"] += completed
    for project, outcome, rate in session.execute(
            select(Item.project_id, Edit.outcome, Edit.edit_rate).join(Item, Item.id == Edit.item_id)):
        counts = found.setdefault(project, Counter())
        counts[f"outcome:{outcome}"] += 1
        if outcome == Outcome.EDITED:
            counts[f"rate:{next(i for i, high in enumerate(dashboard.RATE_BINS[1:]) if rate < high)}"
                   if rate < dashboard.RATE_BINS[-1] else f"rate:{len(dashboard.RATE_BINS) - 1}"] += 1
    return {project: +counts for project, counts in found.items()}  # + drops zeros, as the ledger does


def _ledger(session) -> dict[int, Counter[str]]:
    return {project: +counts for project, counts in tallies.counts(session).items()}


def test_the_ledger_counts_what_the_rows_hold_through_every_kind_of_change(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        corpus = make_corpus(session)
        other = make_project(session)
        annotator = corpus["annotators"][0]
        items = [make_item(session, other, f"p{n}", f"answer {n} is wrong") for n in range(6)]
        edits = [make_edit(session, item, annotator, item.original.replace("wrong", "right")) for item in items[:4]]
        # Edit rates on and just below the bins' edges (a rate is binned by `rate < high`).
        for edit, rate in zip(edits, [0.05, 0.049999999999999996, 0.35, 1.0], strict=True):
            edit.edit_rate = rate
        session.flush()
        assert _ledger(session) == _direct(session)

        session.execute(update(Item).where(Item.id.in_([i.id for i in items[:4]]))
                        .values(completed_count=Item.completed_count + 1, status=ItemStatus.COMPLETE))
        session.execute(update(Edit).where(Edit.id == edits[0].id).values(outcome=Outcome.UNFIXABLE))
        session.execute(update(Item).where(Item.id == items[5].id).values(project_id=corpus["project"].id))
        session.execute(delete(Edit).where(Edit.id == edits[3].id))
        session.execute(delete(Item).where(Item.id == items[4].id))
        assert _ledger(session) == _direct(session)
        histogram = dashboard.edit_rate_histogram(session, other.id)
        assert [n for _, n, _ in histogram][:2] == [1, 0] and histogram[7][1] == 1  # 0.0499…, and 0.35
    with session_scope(engine_for(db_url)) as session:
        assert _ledger(session) == _direct(session)  # committed as well
    with engine_for(db_url).begin() as conn:  # TRUNCATE on Postgres (its own trigger), a plain DELETE on SQLite
        conn.execute(text("TRUNCATE edits CASCADE" if db_url.startswith("postgresql") else "DELETE FROM edits"))
    with session_scope(engine_for(db_url)) as session:
        assert _ledger(session) == _direct(session) and _ledger(session)[other.id]["items"] == 4


def test_folding_keeps_the_counts_in_fewer_rows(db_url, settings_env, monkeypatch):
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
        before, rows = _ledger(session), session.scalar(select(func.count()).select_from(Tally))
        assert not tallies.fold(session, at=rows)  # short enough
        assert tallies.fold(session, at=rows - 1)
        folded = session.scalar(select(func.count()).select_from(Tally))
        assert _ledger(session) == before == _direct(session)
        assert folded < rows and folded == sum(len(counts) for counts in before.values())
    with session_scope(engine_for(db_url)) as session:
        project = make_project(session)
        for n in range(5):
            make_item(session, project, f"q{n}", "a")
        monkeypatch.setattr(tallies, "READER_FOLDS_AT", 3)  # a reader folds a long ledger before summing
        assert _ledger(session) == _direct(session)
        assert session.scalar(select(func.count()).select_from(Tally)) == folded + 2  # items and open
