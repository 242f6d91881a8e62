"""Figures for the admin dashboard: progress, per-annotator effort, throughput, edit rates, agreement,
queue health and recent audit events. Heavy figures look at a bounded recent window, so the page stays
fast on large projects."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import combinations

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models import (
    COMPLETED_OUTCOMES,
    AuditEvent,
    Edit,
    Item,
    ItemStatus,
    Lease,
    LeaseState,
    Outcome,
    Project,
    ReviewStatus,
    User,
    as_utc,
    utcnow,
)
from labels import DEFAULT_MINIMALITY_BUDGET

RECENT_EDITS = 50_000  # window for per-annotator medians
AGREEMENT_ITEMS = 500  # most recent multiply-annotated items (among the RECENT_EDITS) compared
RATE_BINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0]
DONE = [o.value for o in COMPLETED_OUTCOMES]


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
    active_ms: list[int] = field(default_factory=list, repr=False)
    rates: list[float] = field(default_factory=list, repr=False)

    @property
    def median_active_ms(self) -> float | None:
        return statistics.median(self.active_ms) if self.active_ms else None

    @property
    def mean_edit_rate(self) -> float | None:
        return statistics.fmean(self.rates) if self.rates else None


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
    query = (
        select(
            Project, func.count(Item.id),
            func.coalesce(func.sum(case((Item.status == ItemStatus.COMPLETE, 1), else_=0)), 0),
            func.coalesce(func.sum(Item.completed_count), 0),
        )
        .outerjoin(Item, Item.project_id == Project.id)
        .where(Project.archived.is_(False))
        .group_by(Project.id)
        .order_by(Project.name)
    )
    if project_id:
        query = query.where(Project.id == project_id)
    return [
        ProjectProgress(project, items, complete, annotations, items * project.annotations_per_item)
        for project, items, complete, annotations in session.execute(query).all()
    ]


def annotators(session: Session, project_id: int | None) -> list[AnnotatorRow]:
    query = _scoped_via_item(
        select(User.username, Edit.outcome, Edit.active_ms, Edit.edit_rate, Edit.not_minimal, Edit.review_status)
        .join(User, User.id == Edit.annotator_id)
        .order_by(Edit.id.desc())
        .limit(RECENT_EDITS),
        Edit.item_id, project_id,
    )
    rows: dict[str, AnnotatorRow] = {}
    for username, outcome, active_ms, rate, not_minimal, review_status in session.execute(query):
        row = rows.setdefault(username, AnnotatorRow(username))
        if outcome == Outcome.SKIPPED:
            row.skipped += 1
            continue
        row.completed += 1
        row.not_minimal += bool(not_minimal)
        row.accepted += review_status == ReviewStatus.ACCEPTED
        row.rejected += review_status == ReviewStatus.REJECTED
        if active_ms is not None:
            row.active_ms.append(active_ms)
        if outcome == Outcome.EDITED:
            row.rates.append(rate)
    return sorted(rows.values(), key=lambda r: -r.completed)


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
    """(bin label, count, bin lies above the budget) for edited outcomes."""
    budget = DEFAULT_MINIMALITY_BUDGET
    if project_id and (project := session.get(Project, project_id)):
        budget = project.minimality_budget
    buckets = [
        case(*((Edit.edit_rate < high, index) for index, high in enumerate(RATE_BINS[1:])), else_=len(RATE_BINS) - 1)
    ]
    query = _scoped_via_item(
        select(buckets[0], func.count()).where(Edit.outcome == Outcome.EDITED).group_by(buckets[0]),
        Edit.item_id, project_id,
    )
    counts = dict(session.execute(query).all())
    labels = [f"{lo:.2f}" for lo in RATE_BINS[:-1]] + [f"≥{RATE_BINS[-1]:.0f}"]
    return [(label, counts.get(i, 0), RATE_BINS[i] >= budget) for i, label in enumerate(labels)]


def _pair_agreement(a: list[int], b: list[int]) -> tuple[int, int, Counter]:
    same = sum(x == y for x, y in zip(a, b, strict=True))
    changed = Counter((x != 0, y != 0) for x, y in zip(a, b, strict=True))
    return same, len(a), changed


def _kappa(table: Counter) -> float | None:
    total = sum(table.values())
    if not total:
        return None
    observed = (table[(True, True)] + table[(False, False)]) / total
    p_a = (table[(True, True)] + table[(True, False)]) / total
    p_b = (table[(True, True)] + table[(False, True)]) / total
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


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
    same = total = pairs = 0
    table: Counter = Counter()
    for label_sets in by_item.values():
        for a, b in combinations(label_sets, 2):
            if len(a) != len(b):
                continue  # labelled with different tokenizers: not comparable
            s, n, changed = _pair_agreement(a, b)
            same, total, pairs = same + s, total + n, pairs + 1
            table += changed
    return Agreement(pairs, len(by_item), same / total if total else None, _kappa(table))


def queue_health(session: Session, project_id: int | None) -> QueueHealth:
    now = utcnow()
    open_items = session.scalar(_scoped(
        select(func.count()).select_from(Item).where(Item.status == ItemStatus.OPEN), project_id
    ))
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
    outcomes = dict(session.execute(_scoped_via_item(
        select(Edit.outcome, func.count()).group_by(Edit.outcome), Edit.item_id, project_id
    )).all())
    total = sum(outcomes.values())
    return QueueHealth(
        open_items=open_items, active_leases=active, stale_leases=stale,
        oldest_lease_min=(now - oldest).total_seconds() / 60 if oldest else None,
        skip_rate=outcomes.get(Outcome.SKIPPED.value, 0) / total if total else None,
    )


def recent_audit(session: Session, limit: int = 20) -> list[tuple[AuditEvent, str]]:
    rows = session.execute(
        select(AuditEvent, User.username).outerjoin(User, User.id == AuditEvent.actor_id)
        .order_by(AuditEvent.id.desc()).limit(limit)
    ).all()
    return [(event, username or "system") for event, username in rows]
