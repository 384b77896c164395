"""The gate: a candidate replaces the active model only when it is not worse on the same holdout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.db import Database
from core.registry import activate, active_version, prune_artifacts
from core.storage import Storage
from training.data import Arrays
from training.evaluate import evaluate_version


@dataclass(frozen=True)
class Decision:
    activate: bool
    reason: str
    active_version: str | None = None
    active_metrics: dict[str, Any] | None = None


def gate_decision(
    candidate: dict[str, Any],
    active: dict[str, Any] | None,
    *,
    min_sensitivity: float,
    auroc_margin: float,
    policy: str,
) -> Decision:
    """Pass when AUROC is within `auroc_margin` of the active model's and sensitivity holds."""
    if policy == "never":
        return Decision(False, "activation not requested (--activate never)")
    if policy == "always":
        return Decision(True, "activated as requested (--activate always)")
    sensitivity = candidate.get("sensitivity") or 0.0
    if sensitivity < min_sensitivity:
        return Decision(
            False,
            f"holdout sensitivity {sensitivity:.3f} is below the minimum {min_sensitivity:.3f}",
        )
    if active is None:
        return Decision(True, "no active model; the candidate meets the sensitivity minimum")
    ours, theirs = candidate.get("auroc"), active.get("auroc")
    if ours is None or theirs is None:
        return Decision(False, "AUROC undefined on the holdout (it needs both classes)")
    if ours < theirs - auroc_margin:
        return Decision(
            False,
            f"holdout AUROC {ours:.4f} is worse than the active model's {theirs:.4f} "
            f"by more than {auroc_margin}",
        )
    return Decision(True, f"holdout AUROC {ours:.4f} vs active {theirs:.4f}, within {auroc_margin}")


def promote_if_allowed(
    db: Database,
    storage: Storage,
    candidate: str,
    candidate_metrics: dict[str, Any],
    holdout: Arrays,
    *,
    min_sensitivity: float,
    auroc_margin: float,
    policy: str,
    keep_inactive: int,
) -> Decision:
    """Evaluate the active model on the same holdout, decide, and activate in one transaction."""
    with db.session() as session:
        current = active_version(session)
    active_metrics = None
    if current is not None and current.version != candidate and policy == "if-better":
        active_metrics = evaluate_version(storage, current, holdout)
    decision = gate_decision(
        candidate_metrics,
        active_metrics,
        min_sensitivity=min_sensitivity,
        auroc_margin=auroc_margin,
        policy=policy,
    )
    decision = Decision(
        decision.activate, decision.reason, current.version if current else None, active_metrics
    )
    with db.session() as session:
        if decision.activate:
            activate(session, candidate)
        prune_artifacts(session, storage, keep_inactive)
    return decision
