"""Importing edits a file already holds: its `edited` column (or the one mapped to `edited`).

Each row's edit is stored either as a **completed edit** by a named external source, an annotator account
of kind `import` (`import-NAME`, created on first use, no password), or as a **suggestion** from that
source that people start from. An edit goes through the one submit (`annotation.submit_in`, in the import's
transaction): the server computes its diff, labels and statistics exactly as for any edit, the item's
count goes up, webhooks fire. A suggestion's edit rate comes from the same label engine. A row whose
`edited` cell is empty imports its item without an edit.

One source edits an item once: importing the same file again adds nothing, and a second row for the same
item with another edit is a bad row. An edit for an item that already has all its N annotations is a bad
row too; as with any import, one bad row refuses the whole file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import AnnotatorKind, Edit, Item, ItemStatus, Lease, Outcome, Project, Suggestion, User, utcnow
from app.services import annotation, queue
from app.services.users import create_service_account

EDITS, SUGGESTIONS = "edits", "suggestions"
MODES = (EDITS, SUGGESTIONS)
ACCOUNT_PREFIX = "import-"
# Written once for Python and for the form's `pattern` attribute (browsers compile it with the `v` flag,
# where a literal "-" in a class must be escaped).
NAME_PATTERN = r"[A-Za-z0-9_.\-]{2,48}"
NAME_RE = re.compile(f"^{NAME_PATTERN}$")


class EditSourceError(DomainError):
    """An import of edits that cannot start (a bad source name or mode); the message names the field."""


@dataclass(frozen=True)
class EditSource:
    """Who the imported edits come from, and whether they become completed edits or suggestions."""

    name: str
    mode: str = EDITS

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise EditSourceError("edits source: 2–48 characters, letters, digits and . _ - only")
        if self.mode not in MODES:
            raise EditSourceError(f"edits as: one of {', '.join(MODES)}, not {self.mode!r}")


def source_account(session: Session, name: str) -> User:
    """The annotator account of kind `import` that edits from `name` are written by (created if needed)."""
    username = ACCOUNT_PREFIX + name
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        return create_service_account(session, username, f"Imported from {name}", AnnotatorKind.IMPORT)
    if user.kind != AnnotatorKind.IMPORT:
        raise EditSourceError(f"edits source: the account {username!r} exists and is not an import source; "
                              "choose another name")
    return user


def _fingerprint(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


class EditImporter:
    """The edits of one import: stores each row's edit for its item, or says what is wrong with it."""

    def __init__(self, session: Session, project: Project, source: EditSource) -> None:
        source.validate()
        self.session, self.project, self.source = session, project, source
        self.account = source_account(session, source.name) if source.mode == EDITS else None
        self.first: dict[bytes, tuple[int, bytes]] = {}  # item key -> (line, edit) of its first row with an edit
        self.stored = self.duplicates = 0

    def note(self, key: bytes, line: int, text: str) -> None:
        """The first row of an item (`key`) in the file brings this edit."""
        self.first[key] = (line, _fingerprint(text))

    def repeated(self, key: bytes, text: str) -> str | None:
        """A later row of an item in the file brings an edit: None if it is the first row's, else the problem."""
        first = self.first.get(key)
        if first is None:
            return "an earlier line has the same prompt and response without an edit; a source edits an item once"
        if first[1] != _fingerprint(text):
            return f"line {first[0]} has the same prompt and response with another edit; a source edits an item once"
        return None

    def store(self, item_id: int, text: str, *, new_item: bool) -> str | None:
        """Store the edit of an item; the reason it cannot be stored, or None."""
        if self.source.mode == SUGGESTIONS:
            return self._suggest(item_id, text, new_item)
        return self._edit(item_id, text, new_item)

    def _edit(self, item_id: int, text: str, new_item: bool) -> str | None:
        account = self.account
        if not new_item:
            earlier = self.session.execute(
                select(Item.original, Edit.edited_text).join(Lease, Lease.item_id == Item.id)
                .join(Edit, Edit.lease_id == Lease.id).where(Item.id == item_id, Lease.annotator_id == account.id)
            ).first()
            if earlier is not None:  # this source's edit of it came with an earlier import
                return self._again(earlier.edited_text, annotation.decide_outcome(
                    Outcome.EDITED, text, earlier.original)[1])
            item = queue.lock_item(self.session, item_id)
            self.session.expunge(item)  # the session keeps no item per row: an import of any size, flat memory
        else:  # inserted by this import a moment ago: open, no annotation yet, invisible to others
            item = Item(id=item_id, status=ItemStatus.OPEN, completed_count=0)
        lease = queue.lease_item(self.session, item, self.project, account)
        if lease is None:
            return (f"the item already has its {self.project.annotations_per_item} annotation(s), "
                    "or they are leased; nothing more can be added to it")
        try:
            annotation.submit_in(self.session, lease.id, account, Outcome.EDITED, text)
        except DomainError as exc:
            return str(exc)
        self.stored += 1
        return None

    def _again(self, stored: str, text: str) -> str | None:
        """An item this source gave its edit for in an earlier import: the same edit is a duplicate."""
        if stored != text:
            return "this source gave another edit of the item in an earlier import; a source edits an item once"
        self.duplicates += 1
        return None

    def _suggest(self, item_id: int, text: str, new_item: bool) -> str | None:
        name = self.source.name
        text = text.replace("\r\n", "\n")
        if not new_item and (earlier := self.session.scalar(select(Suggestion.text).where(
                Suggestion.item_id == item_id, Suggestion.editor_id.is_(None), Suggestion.source == name))) is not None:
            return self._again(earlier, text)
        original = self.session.scalar(select(Item.original).where(Item.id == item_id))
        try:
            rate = annotation.analyse(self.project.tokenizer, original, text).stats.edit_rate
        except DomainError as exc:
            return str(exc)
        self.session.execute(insert(Suggestion).values(
            item_id=item_id, editor_id=None, source=name, text=text, edit_rate=rate,
            not_minimal=rate > self.project.minimality_budget, created_at=utcnow(),
        ))
        self.stored += 1
        return None
