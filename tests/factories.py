"""Test data made with the real ORM and the real label engine (no mocks): users, projects, items, edits.

Every helper adds to the given session and flushes, so ids are set; the caller commits.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.driver import SessionDatabase
from app.editors.service import EditorSettings, create_editor, join_project
from app.models import (
    Edit,
    Item,
    Outcome,
    Project,
    Review,
    ReviewStatus,
    Role,
    User,
    Verdict,
)
from app.security import hash_password
from app.services import annotation, queue
from labels import analyse_edit, load_tokenizer

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = str(ROOT / "var" / "models" / "SmolLM2-135M-Instruct")
PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)
_password_hash: str | None = None


def _hash() -> str:
    # argon2 is deliberately slow: hash the shared test password once per run.
    global _password_hash
    if _password_hash is None:
        _password_hash = hash_password(PASSWORD)
    return _password_hash


def make_user(session: Session, role: Role = Role.ANNOTATOR, username: str | None = None, **fields) -> User:
    user = User(
        username=username or f"{role.value}{next(_counter)}",
        role=role.value,
        password_hash=_hash(),
        **fields,
    )
    session.add(user)
    session.flush()
    return user


def make_project(session: Session, name: str | None = None, tokenizer: str = DEFAULT_TOKENIZER, **fields) -> Project:
    project = Project(name=name or f"project {next(_counter)}", tokenizer=tokenizer, **fields)
    session.add(project)
    session.flush()
    return project


def make_model_account(session: Session, project_id: int, name: str = "smol", model: str = "m") -> User:
    """A model editor (at an address nobody serves) and its annotator account (kind model), a member of the
    project: for tests of what the model's edits do, not of the model."""
    editor = create_editor(session, EditorSettings(name=name, base_url="http://127.0.0.1:9/v1", model=model), None)
    join_project(session, editor, project_id)
    return session.get(User, editor.user_id)


def make_item(session: Session, project: Project, prompt: str, original: str, **fields) -> Item:
    content_hash = hashlib.sha256(f"{prompt}\x00{original}".encode()).hexdigest()
    item = Item(project_id=project.id, prompt=prompt, original=original, content_hash=content_hash, **fields)
    session.add(item)
    session.flush()
    return item


def make_edit(
    session: Session,
    item: Item,
    annotator: User,
    edited: str,
    *,
    outcome: Outcome = Outcome.EDITED,
    review_status: ReviewStatus = ReviewStatus.PENDING,
    tokenizer: str | None = None,
    created_at: datetime | None = None,
    budget: float = 0.35,
) -> Edit:
    """An edit with labels, diff and stats from the label engine, as the submit path stores them."""
    project = session.get(Project, item.project_id)
    analysis = analyse_edit(item.original, edited, load_tokenizer(tokenizer or project.tokenizer))
    record = analysis.to_record()
    edit = Edit(
        item_id=item.id,
        annotator_id=annotator.id,
        outcome=outcome.value,
        edited_text=edited,
        char_diff=record["char_diff"],
        token_labels=record["token_labels"],
        tokenizer_hash=analysis.labels.tokenizer_hash,
        algorithm=analysis.labels.algorithm,
        stats=record["stats"],
        edit_rate=analysis.stats.edit_rate,
        not_minimal=not analysis.is_minimal(budget),
        review_status=review_status.value,
        created_at=created_at or datetime.now(UTC),
    )
    session.add(edit)
    session.flush()
    return edit


def make_review(
    session: Session, edit: Edit, reviewer: User, verdict: Verdict, *, fixed: str | None = None, comment: str = ""
) -> Review:
    """A review; fix_and_accept stores the reviewer's text as a new layer with its own labels."""
    review = Review(edit_id=edit.id, reviewer_id=reviewer.id, verdict=verdict.value, comment=comment)
    if verdict == Verdict.FIX_AND_ACCEPT:
        item = session.get(Item, edit.item_id)
        project = session.get(Project, item.project_id)
        record = analyse_edit(item.original, fixed, load_tokenizer(project.tokenizer)).to_record()
        review.fixed_text = fixed
        review.char_diff, review.token_labels, review.stats = (
            record["char_diff"], record["token_labels"], record["stats"]
        )
    edit.review_status = (ReviewStatus.REJECTED if verdict == Verdict.REJECT else ReviewStatus.ACCEPTED).value
    session.add(review)
    session.flush()
    return review


SAMPLE_PAIRS = [
    ("What is the capital of France?", "The capital of France is Lyon.", "The capital of France is Paris."),
    ("Name a prime number.", "Nine is a prime number.", "Seven is a prime number."),
    ("Say hello politely.", "Hello there, good day to you!", "Hello there, good day to you!"),
    ("Summarise: cats sleep a lot.", "Cats sleeps for most of the days.", "Cats sleep for most of the day."),
    ("Translate 'merci' to English.", "It means 'please'.", "It means 'thank you'."),
    ("2 + 2 = ?", "2 + 2 = 5, obviously.", "2 + 2 = 4."),
]


def make_corpus(session: Session, *, start: datetime | None = None) -> dict:
    """A small realistic project: edits of every outcome and review state, by two annotators.

    Returns the objects by role so tests can reason about which rows each filter selects.
    """
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    admin = make_user(session, Role.ADMIN)
    reviewer = make_user(session, Role.REVIEWER)
    annotators = [make_user(session, Role.ANNOTATOR), make_user(session, Role.ANNOTATOR)]
    project = make_project(session)
    edits = []
    for index, (prompt, original, edited) in enumerate(SAMPLE_PAIRS):
        item = make_item(session, project, prompt, original)
        outcome = Outcome.NO_CHANGE_NEEDED if original == edited else Outcome.EDITED
        edits.append(
            make_edit(session, item, annotators[index % 2], edited, outcome=outcome,
                      created_at=start + timedelta(days=index))
        )
    unfixable_item = make_item(session, project, "Prove P = NP.", "Here is a proof: trivially true.")
    unfixable = make_edit(session, unfixable_item, annotators[0], unfixable_item.original,
                          outcome=Outcome.UNFIXABLE, created_at=start + timedelta(days=7))
    skipped_item = make_item(session, project, "Skip me", "Some response.")
    skipped = make_edit(session, skipped_item, annotators[1], skipped_item.original, outcome=Outcome.SKIPPED,
                        created_at=start + timedelta(days=8))
    reviews = {
        "accept": make_review(session, edits[0], reviewer, Verdict.ACCEPT, comment="good"),
        "fix": make_review(session, edits[1], reviewer, Verdict.FIX_AND_ACCEPT,
                           fixed="Seven is a prime number, as is eleven."),
        "reject": make_review(session, edits[3], reviewer, Verdict.REJECT, comment="not minimal"),
        "no_change": make_review(session, edits[2], reviewer, Verdict.ACCEPT),
    }
    return {
        "admin": admin,
        "reviewer": reviewer,
        "annotators": annotators,
        "project": project,
        "edits": edits,
        "unfixable": unfixable,
        "skipped": skipped,
        "reviews": reviews,
    }


def _wait_for(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to the end from sync code, also where an event loop runs already (Playwright's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def next_task(session: Session, project: Project, user: User) -> queue.Task | None:
    """`queue.next_task` in the caller's unit of work: the task, or None (nothing left, or not a member)."""
    return _wait_for(queue.next_task(SessionDatabase(session), project.id, user))[1]


def submit(session: Session, lease_id: int, user: User, outcome: Outcome, text: str = "", **options) -> Edit:
    """`annotation.submit` in the caller's unit of work."""
    return _wait_for(annotation.submit(SessionDatabase(session), lease_id, user, outcome, text, **options))
