"""What every concurrency test of the queue checks at the end, whichever path leased and submitted."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from app.db import session_scope
from app.models import Edit, Item, ItemStatus


def assert_exactly_n_annotations(item_ids: list[int], n: int) -> None:
    """Every item has exactly `n` edits, each from a different annotator, and its count and status say so."""
    with session_scope() as session:
        per_item = Counter(session.scalars(select(Edit.item_id)))
        pairs = session.execute(select(Edit.item_id, Edit.annotator_id)).all()
        items = session.scalars(select(Item).where(Item.id.in_(item_ids))).all()
    assert per_item == Counter({item_id: n for item_id in item_ids})
    assert len(pairs) == len(set(pairs))
    assert all(i.completed_count == n and i.status == ItemStatus.COMPLETE for i in items)
