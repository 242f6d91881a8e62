"""Counts over items and edits from the `tallies` ledger (app.models.Tally), kept by database triggers.

Every insert, update or delete of items and edits appends its deltas (migration 0018), so a count is the sum of
its rows: exact in any transaction's snapshot, and never a row two submits wait on. `fold` replaces the rows by
one sum per count: the worker does it once the ledger holds WORKER_FOLDS_AT rows, and a reader first when it finds
READER_FOLDS_AT (no worker running).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.models import Tally

WORKER_FOLDS_AT = 1_000  # a few seconds of submits; folding a short ledger would only rewrite it
READER_FOLDS_AT = 20_000

# Postgres: the rows deleted are exactly the rows summed (a concurrent append is neither). SQLite has one writer at
# a time, so the two statements see the same rows.
_FOLD = {
    "postgresql": ["""
        WITH folded AS (DELETE FROM tallies RETURNING project_id, name, n)
        INSERT INTO tallies (project_id, name, n)
        SELECT project_id, name, sum(n) FROM folded GROUP BY project_id, name HAVING sum(n) <> 0
    """],
    "sqlite": ["""
        INSERT INTO tallies (project_id, name, n)
        SELECT project_id, name, sum(n) FROM tallies WHERE id <= :last GROUP BY project_id, name HAVING sum(n) <> 0
    """, "DELETE FROM tallies WHERE id <= :last"],
}


def _rows(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Tally)) or 0


def fold(session: Session, at: int = 0) -> bool:
    """One row per (project, count), in the caller's transaction, if the ledger holds more than `at` rows."""
    last = session.scalar(select(func.max(Tally.id)))
    if last is None or (at and _rows(session) <= at):
        return False
    for statement in _FOLD[session.get_bind().dialect.name]:
        session.execute(text(statement), {"last": last})
    return True


def counts(session: Session, project_id: int | None = None) -> dict[int, Counter[str]]:
    """{project id: Counter(count name -> value)}, of one project or of all."""
    if _rows(session) > READER_FOLDS_AT:
        with session.begin_nested():
            fold(session)
    query = select(Tally.project_id, Tally.name, func.sum(Tally.n)).group_by(Tally.project_id, Tally.name)
    if project_id:
        query = query.where(Tally.project_id == project_id)
    found: dict[int, Counter[str]] = defaultdict(Counter)
    for project, name, value in session.execute(query):
        found[project][name] = int(value)
    return found


def total(found: dict[int, Counter[str]]) -> Counter[str]:
    """The counts of all the projects in `found` added up."""
    summed: Counter[str] = Counter()
    for per_project in found.values():
        summed.update(per_project)
    return summed
