"""Suggestions in the annotator's editor: which one an item's editor opens with, and the text that an
edit started from a suggestion is measured against (`annotation.submit` records `suggestion_used` and the
person's edit rate relative to the suggestion). Editor jobs in suggest mode store them (app.editors.bulk).
Written as steps (app.driver): the editor page and submit run them on the app's `Database`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, bindparam, func, select

from app.driver import Steps, entity, labelled
from app.errors import DomainError
from app.models import ModelEditor, Suggestion


@dataclass(frozen=True)
class Offered:
    """The suggestion an item's editor opens with, who made it, and how many the item has in all."""

    suggestion: Suggestion
    editor: str | None  # the model editor's name; None for an imported suggestion (`suggestion.source`)
    of: int

    @property
    def author(self) -> str:
        if self.editor is not None:
            return f"model editor {self.editor}"
        return f"imported from {self.suggestion.source}" if self.suggestion.source else "imported"


# The newest first (then the highest id, so ties are decided the same way every time); the window counts
# the item's suggestions before the limit.
_OFFERED = (
    labelled(select(Suggestion.__table__))
    .add_columns(ModelEditor.name.label("editor_name"), func.count().over().label("offered"))
    .outerjoin(ModelEditor, ModelEditor.id == Suggestion.editor_id)
    .where(Suggestion.item_id == bindparam("item_id"))
    .order_by(Suggestion.created_at.desc(), Suggestion.id.desc())
    .limit(1)
)


def offering(item_id: int) -> Steps[Offered | None]:
    """The suggestion the item's editor opens with: the newest one when several editors (or imports)
    suggested an edit; None if the item has none."""
    row = yield _OFFERED, {"item_id": item_id}
    return None if row is None else Offered(entity(Suggestion, row), row.editor_name, row.offered)


_SUGGESTION = labelled(select(Suggestion.__table__)).where(Suggestion.id == bindparam("suggestion_id"),
                                                           Suggestion.item_id == bindparam("item_id"))


def suggestion_of_item(suggestion_id: int, item_id: int) -> Steps[Suggestion]:
    """The item's suggestion `suggestion_id`; a clear error if it is no suggestion of the item."""
    # Beyond a 64-bit key there is no such row, and SQLite could not even bind the number.
    found = 0 < suggestion_id < 2**63
    row = (yield _SUGGESTION, {"suggestion_id": suggestion_id, "item_id": item_id}) if found else None
    if row is None:
        raise DomainError(f"suggestion_id: {suggestion_id} is not a suggestion for this item.")
    return entity(Suggestion, row)


_STARTED_FROM = (
    select(Suggestion.text)
    .where(Suggestion.item_id == bindparam("item_id"),
           Suggestion.editor_id.is_not_distinct_from(bindparam("editor_id", type_=Integer)))
    .order_by(Suggestion.created_at.desc(), Suggestion.id.desc())
    .limit(1)
)


def started_from(item_id: int, editor_id: int | None) -> Steps[str | None]:
    """The text of the suggestion an edit of the item started from, by the editor the edit names (editor
    None: the newest imported suggestion); None if it is gone (its editor was deleted)."""
    row = yield _STARTED_FROM, {"item_id": item_id, "editor_id": editor_id}
    return None if row is None else row.text
