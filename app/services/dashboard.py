"""Figures for the admin dashboard: progress, per-annotator effort, throughput, edit rates, agreement,
the quality of each model editor, queue health and recent audit events. Heavy figures look at a bounded
recent window, so the page stays fast on large projects."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import combinations
from operator import and_, eq

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session, aliased

from app.models import (
    COMPLETED_OUTCOMES,
    AnnotatorKind,
    AuditEvent,
    Edit,
    Item,
    Lease,
    LeaseState,
    ModelEditor,
    Outcome,
    Project,
    ReviewStatus,
    User,
    as_utc,
    utcnow,
)
from app.services import tallies
from labels import DEFAULT_MINIMALITY_BUDGET

RECENT_EDITS = 50_000  # window for per-annotator medians
AGREEMENT_ITEMS = 500  # most recent multiply-annotated items (among the RECENT_EDITS) compared
# The per-editor figures, each bounded so the dashboard costs the same at any size (tens of ms at 1M edits,
# even for one project, where every row read costs an item lookup):
EDITOR_RECENT = 1_000  # each model editor's latest edits, searched for items people edited too
EDITOR_AGREEMENT_ITEMS = 200  # of which the latest shared items are compared
SUGGESTED_RECENT = 5_000  # the latest edits that started from a suggestion
RATE_BINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0]
DONE = [o.value for o in COMPLETED_OUTCOMES]
COMPARED = [Outcome.EDITED.value, Outcome.NO_CHANGE_NEEDED.value]  # outcomes whose token labels are compared


@dataclass
class ProjectProgress:
    project: Project
    items: int
    complete: int
    annotations: int
    target: int

    @property
    def percent(self) -> float:
        return 100.0 * self.annotations / self.target if self.target else 0.0


@dataclass
class AnnotatorRow:
    username: str
    completed: int = 0
    skipped: int = 0
    not_minimal: int = 0
    accepted: int = 0
    rejected: int = 0
    median_active_ms: float | None = None
    mean_edit_rate: float | None = None


@dataclass
class Agreement:
    pairs: int
    items: int
    exact: float | None  # share of original tokens given the same label (keep/delete/replace)
    kappa: float | None  # Cohen's kappa of "changed vs kept", pooled over all pairs


@dataclass
class QueueHealth:
    open_items: int
    active_leases: int
    stale_leases: int  # past expiry, not yet swept (they no longer count)
    oldest_lease_min: float | None
    skip_rate: float | None


def _scoped(query, project_id: int | None):
    return query.where(Item.project_id == project_id) if project_id else query


def _scoped_via_item(query, item_id_column, project_id: int | None):
    """Edits or leases of one project (through their item), or of all projects without the join: at a
    million edits the join alone cost more than the counting."""
    if not project_id:
        return query
    return query.join(Item, Item.id == item_id_column).where(Item.project_id == project_id)


def progress(session: Session, project_id: int | None) -> list[ProjectProgress]:
    query = select(Project).where(Project.archived.is_(False)).order_by(Project.name)
    if project_id:
        query = query.where(Project.id == project_id)
    counts = tallies.counts(session, project_id)
    return [
        ProjectProgress(project, counts[project.id]["items"], counts[project.id]["complete"],
                        counts[project.id]["annotations"], counts[project.id]["items"] * project.annotations_per_item)
        for project in session.scalars(query)
    ]


def annotators(session: Session, project_id: int | None) -> list[AnnotatorRow]:
    """Per annotator, over the latest RECENT_EDITS edits: counted in the database, medians by window functions."""
    recent = _scoped_via_item(
        select(Edit.annotator_id, Edit.outcome, Edit.active_ms, Edit.edit_rate, Edit.not_minimal, Edit.review_status)
        .order_by(Edit.id.desc()).limit(RECENT_EDITS),
        Edit.item_id, project_id,
    ).subquery()
    done = recent.c.outcome != Outcome.SKIPPED
    figures = (
        select(recent.c.annotator_id, func.count().filter(done), func.count().filter(~done),
               func.count().filter(done & recent.c.not_minimal),
               func.count().filter(done & (recent.c.review_status == ReviewStatus.ACCEPTED)),
               func.count().filter(done & (recent.c.review_status == ReviewStatus.REJECTED)),
               func.avg(recent.c.edit_rate).filter(recent.c.outcome == Outcome.EDITED))
        .group_by(recent.c.annotator_id)
    )
    # The median is the middle value (the mean of the two middle ones) of each annotator's active times.
    timed = recent.c.active_ms.is_not(None) & done
    ranked = select(
        recent.c.annotator_id, recent.c.active_ms,
        func.row_number().over(partition_by=recent.c.annotator_id, order_by=recent.c.active_ms).label("rank"),
        func.count().over(partition_by=recent.c.annotator_id).label("times"),
    ).where(timed).subquery()
    medians = dict(session.execute(
        select(ranked.c.annotator_id, func.avg(ranked.c.active_ms))
        .where(ranked.c.rank.in_([(ranked.c.times + 1) / 2, (ranked.c.times + 2) / 2]))
        .group_by(ranked.c.annotator_id)
    ).all())
    names = dict(session.execute(select(User.id, User.username)).all())
    rows = [
        AnnotatorRow(names[annotator], completed, skipped, not_minimal, accepted, rejected,
                     float(medians[annotator]) if annotator in medians else None,
                     float(rate) if rate is not None else None)
        for annotator, completed, skipped, not_minimal, accepted, rejected, rate in session.execute(figures)
    ]
    return sorted(rows, key=lambda r: -r.completed)


def throughput(session: Session, project_id: int | None, hours: int = 24) -> list[tuple[str, int]]:
    """Completed annotations per hour over the last `hours` hours, oldest first."""
    now = utcnow()
    since = now - timedelta(hours=hours)
    stamps = session.scalars(_scoped_via_item(
        select(Edit.created_at).where(Edit.created_at >= since, Edit.outcome.in_(DONE)), Edit.item_id, project_id,
    ))
    counts = Counter(int((now - as_utc(stamp)).total_seconds() // 3600) for stamp in stamps)
    return [((now - timedelta(hours=h)).strftime("%H:00"), counts.get(h, 0)) for h in range(hours - 1, -1, -1)]


def edit_rate_histogram(session: Session, project_id: int | None) -> list[tuple[str, int, bool]]:
    """(bin label, count, bin lies above the budget) for edited outcomes. RATE_BINS are also the bins of the tallies'
    triggers (migration 0018): changing them needs a migration."""
    budget = DEFAULT_MINIMALITY_BUDGET
    if project_id and (project := session.get(Project, project_id)):
        budget = project.minimality_budget
    counts = tallies.total(tallies.counts(session, project_id))
    labels = [f"{lo:.2f}" for lo in RATE_BINS[:-1]] + [f"≥{RATE_BINS[-1]:.0f}"]
    return [(label, counts[f"rate:{i}"], RATE_BINS[i] >= budget) for i, label in enumerate(labels)]


def _kappa(both: int, only_a: int, only_b: int, neither: int) -> float | None:
    """Cohen's kappa of "changed vs kept" from the 2x2 table of two label sets."""
    total = both + only_a + only_b + neither
    if not total:
        return None
    observed = (both + neither) / total
    p_a, p_b = (both + only_a) / total, (both + only_b) / total
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


@dataclass
class EditorQuality:
    """How one model editor's work compares with people's (docs/editors.md, "Quality on the dashboard")."""

    name: str
    model: str
    shared: Agreement = field(default_factory=lambda: Agreement(0, 0, None, None))  # its edits vs people's
    suggested: int = 0  # people's edits that started from its suggestion
    unchanged: float | None = None  # share of those that kept the suggestion as it was
    mean_rate_on_suggestion: float | None = None  # people's mean edit rate on top of its suggestion


def _pooled(pairs: list[tuple[list[int], list[int]]], items: int) -> Agreement:
    """Token-label agreement pooled over (a, b) label lists of the same original, and Cohen's kappa of
    "changed vs kept"; pairs labelled with different tokenizers are not comparable and left out. Counted
    with map() over the lists (C loops): the dashboard compares hundreds of pairs of hundreds of tokens."""
    same = tokens = compared = both = changed_a = changed_b = 0
    for a, b in pairs:
        if len(a) != len(b):
            continue
        same += sum(map(eq, a, b))
        both += sum(map(and_, map(bool, a), map(bool, b)))
        changed_a, changed_b = changed_a + len(a) - a.count(0), changed_b + len(b) - b.count(0)
        tokens, compared = tokens + len(a), compared + 1
    kappa = _kappa(both, changed_a - both, changed_b - both, tokens - changed_a - changed_b + both)
    return Agreement(compared, items, same / tokens if tokens else None, kappa)


def agreement(session: Session, project_id: int | None) -> Agreement:
    """Token-label agreement between annotators on the original tokens of the same item."""
    # Among the latest RECENT_EDITS edits only: grouping every edit ever made by item cost seconds at a million.
    recent = _scoped_via_item(
        select(Edit.item_id).where(Edit.outcome.in_([Outcome.EDITED, Outcome.NO_CHANGE_NEEDED]))
        .order_by(Edit.id.desc()).limit(RECENT_EDITS),
        Edit.item_id, project_id,
    ).subquery()
    multi = (select(recent.c.item_id).group_by(recent.c.item_id).having(func.count() >= 2)
             .order_by(recent.c.item_id.desc()).limit(AGREEMENT_ITEMS))
    by_item: dict[int, list[list[int]]] = defaultdict(list)
    rows = session.execute(
        select(Edit.item_id, Edit.token_labels).where(
            Edit.item_id.in_(multi.scalar_subquery()), Edit.outcome.in_([Outcome.EDITED, Outcome.NO_CHANGE_NEEDED])
        )
    )
    for item_id, labels in rows:
        by_item[item_id].append(labels.get("original_labels", []))
    return _pooled([pair for label_sets in by_item.values() for pair in combinations(label_sets, 2)], len(by_item))


def _suggestion_figures(session: Session, project_id: int | None, rows: dict[int | None, EditorQuality]) -> None:
    """Per editor, aggregated in the database over the latest SUGGESTED_RECENT edits that started from a
    suggestion (a partial index holds just those): how many, the share kept unchanged, the mean edit rate."""
    recent = _scoped_via_item(
        select(Edit.editor_id, Edit.human_vs_suggestion_rate.label("rate"))
        .where(Edit.suggestion_used, Edit.human_vs_suggestion_rate.is_not(None))
        .order_by(Edit.id.desc()).limit(SUGGESTED_RECENT),
        Edit.item_id, project_id,
    ).subquery()
    figures = session.execute(
        select(recent.c.editor_id, func.count(), func.sum(case((recent.c.rate == 0, 1), else_=0)),
               func.avg(recent.c.rate))
        .group_by(recent.c.editor_id)
    )
    for editor_id, count, unchanged, mean in figures:
        if editor_id in rows:  # None: suggestions imported from a named source, not an editor's
            row = rows[editor_id]
            row.suggested, row.unchanged, row.mean_rate_on_suggestion = count, unchanged / count, float(mean)


_PERSON = aliased(Edit)


def _shared_items(session: Session, project_id: int | None, account: int) -> list[int]:
    """The latest EDITOR_AGREEMENT_ITEMS items among the editor's latest EDITOR_RECENT edits that a person also
    edited on their own (not from a suggestion): the editor's edits by its account's index, each item
    checked for a person's edit by the items' index, all in the database."""
    latest = _scoped_via_item(
        select(Edit.item_id, Edit.created_at).where(Edit.annotator_id == account, Edit.outcome.in_(COMPARED))
        .order_by(Edit.created_at.desc()).limit(EDITOR_RECENT),
        Edit.item_id, project_id,
    ).subquery()
    by_a_person = exists().where(
        _PERSON.item_id == latest.c.item_id, _PERSON.outcome.in_(COMPARED), ~_PERSON.suggestion_used,
        _PERSON.annotator_id == User.id, User.kind == AnnotatorKind.HUMAN.value,
    )
    return list(session.scalars(
        select(latest.c.item_id).where(by_a_person).order_by(latest.c.created_at.desc()).limit(EDITOR_AGREEMENT_ITEMS)
    ))


def _shared_figures(session: Session, project_id: int | None, accounts: dict[int, EditorQuality]) -> None:
    """Per editor, its edits against people's own edits of the same items (`_shared_items`), compared on
    the original-token labels stored with each edit."""
    items = {account: ids for account in accounts if (ids := _shared_items(session, project_id, account))}
    if not items:
        return
    labels = session.execute(
        select(Edit.item_id, Edit.annotator_id, User.kind, Edit.token_labels["original_labels"])
        .join(User, User.id == Edit.annotator_id)
        .where(Edit.item_id.in_({i for ids in items.values() for i in ids}), Edit.outcome.in_(COMPARED),
               ((User.kind == AnnotatorKind.HUMAN.value) & ~Edit.suggestion_used) | Edit.annotator_id.in_(list(items)))
    )
    people: dict[int, list[list[int]]] = defaultdict(list)
    models: dict[tuple[int, int], list[int]] = {}
    for item_id, annotator_id, kind, original_labels in labels:
        if annotator_id in items:
            models[(annotator_id, item_id)] = original_labels or []
        elif kind == AnnotatorKind.HUMAN:
            people[item_id].append(original_labels or [])
    for account, ids in items.items():
        pairs = [(models[(account, i)], theirs) for i in ids if (account, i) in models for theirs in people[i]]
        accounts[account].shared = _pooled(pairs, len(ids))


def editor_quality(session: Session, project_id: int | None) -> list[EditorQuality]:
    """For each model editor: agreement of its edits with people's on the same items, and how people
    used its suggestions (accepted unchanged, edit rate on top)."""
    editors = session.execute(
        select(ModelEditor.id, ModelEditor.user_id, ModelEditor.name, ModelEditor.model).order_by(ModelEditor.name)
    ).all()
    rows = {editor_id: EditorQuality(name, model) for editor_id, _, name, model in editors}
    if rows:
        _suggestion_figures(session, project_id, rows)
        _shared_figures(session, project_id, {account: rows[editor_id] for editor_id, account, _, _ in editors})
    return list(rows.values())


def queue_health(session: Session, project_id: int | None) -> QueueHealth:
    now = utcnow()
    counts = tallies.total(tallies.counts(session, project_id))
    leases = _scoped_via_item(select(Lease.expires_at, Lease.leased_at).where(Lease.state == LeaseState.ACTIVE),
                              Lease.item_id, project_id)
    active = stale = 0
    oldest = None
    for expires_at, leased_at in session.execute(leases):
        if as_utc(expires_at) > now:
            active += 1
            oldest = min(oldest or as_utc(leased_at), as_utc(leased_at))
        else:
            stale += 1
    total = sum(n for name, n in counts.items() if name.startswith("outcome:"))
    return QueueHealth(
        open_items=counts["open"], active_leases=active, stale_leases=stale,
        oldest_lease_min=(now - oldest).total_seconds() / 60 if oldest else None,
        skip_rate=counts[f"outcome:{Outcome.SKIPPED.value}"] / total if total else None,
    )


def recent_audit(session: Session, limit: int = 20) -> list[tuple[AuditEvent, str]]:
    rows = session.execute(
        select(AuditEvent, User.username).outerjoin(User, User.id == AuditEvent.actor_id)
        .order_by(AuditEvent.id.desc()).limit(limit)
    ).all()
    return [(event, username or "system") for event, username in rows]
