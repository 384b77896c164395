"""The gate: a candidate replaces the active model only when it is not worse on the same
holdout, clean and under the stressed changes alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.activation import activate_version, leave_to_the_sweep
from core.choices import ActivationPolicy
from core.db import Database
from core.registry import active_version, prune_artifacts
from core.storage import Storage
from training.data import Sample
from training.evaluate import measure_version


@dataclass(frozen=True)
class Decision:
    activate: bool
    reason: str
    active_version: str | None = None
    active_metrics: dict[str, Any] | None = None
    active_stressed: dict[str, Any] | None = None


@dataclass(frozen=True)
class GateRules:
    min_sensitivity: float
    auroc_margin: float
    specificity_margin: float
    policy: str


def gate_decision(
    candidate: dict[str, Any],
    active: dict[str, Any] | None,
    rules: GateRules,
    candidate_stressed: dict[str, Any] | None = None,
    active_stressed: dict[str, Any] | None = None,
) -> Decision:
    """Pass when the clean holdout sensitivity holds and the candidate trails the active model
    by no more than the margins in clean AUROC, stressed mean AUROC and stressed specificity at
    its threshold. A candidate better on the clean holdout but worse under stress fails."""
    if rules.policy == ActivationPolicy.NEVER:
        return Decision(False, "activation not requested (--activate never)")
    if rules.policy == ActivationPolicy.ALWAYS:
        return Decision(True, "activated as requested (--activate always)")
    sensitivity, floor = candidate.get("sensitivity") or 0.0, rules.min_sensitivity
    if sensitivity < floor:
        return Decision(
            False, f"holdout sensitivity {sensitivity:.3f} is below the minimum {floor:.3f}"
        )
    if active is None:
        return Decision(True, "no active model; the candidate meets the sensitivity minimum")
    ours, theirs = candidate.get("auroc"), active.get("auroc")
    if ours is None or theirs is None:
        return Decision(False, "AUROC undefined on the holdout (it needs both classes)")
    if ours < theirs - rules.auroc_margin:
        return Decision(
            False,
            f"holdout AUROC {ours:.4f} is worse than the active model's {theirs:.4f} "
            f"by more than {rules.auroc_margin}",
        )
    reason = f"holdout AUROC {ours:.4f} vs active {theirs:.4f}"
    if candidate_stressed is not None and active_stressed is not None:
        refusal = _stressed_refusal(candidate_stressed, active_stressed, rules)
        if refusal is not None:
            return Decision(False, refusal)
        reason += (
            f", stressed mean AUROC {candidate_stressed['mean_auroc']:.4f} vs "
            f"{active_stressed['mean_auroc']:.4f}, stressed specificity "
            f"{candidate_stressed['specificity']:.3f} vs {active_stressed['specificity']:.3f}"
        )
    return Decision(True, f"{reason}, within the margins")


def _stressed_refusal(
    candidate: dict[str, Any], active: dict[str, Any], rules: GateRules
) -> str | None:
    if candidate["mean_auroc"] < active["mean_auroc"] - rules.auroc_margin:
        return (
            f"stressed holdout mean AUROC {candidate['mean_auroc']:.4f} is worse than the active "
            f"model's {active['mean_auroc']:.4f} by more than {rules.auroc_margin}"
        )
    if candidate["specificity"] < active["specificity"] - rules.specificity_margin:
        return (
            f"stressed holdout specificity at the threshold {candidate['specificity']:.3f} is "
            f"worse than the active model's {active['specificity']:.3f} by more than "
            f"{rules.specificity_margin}"
        )
    return None


def promote_if_allowed(
    db: Database,
    storage: Storage,
    candidate: str,
    candidate_metrics: dict[str, Any],
    candidate_stressed: dict[str, Any] | None,
    holdout: list[Sample],
    rules: GateRules,
    *,
    threads: int,
    max_pixels: int,
    keep_inactive: int,
    release: Callable[[], None] = leave_to_the_sweep,
) -> Decision:
    """Measure the active model on the same holdout patients (decoded as that version was
    trained: its own input size and preprocessing), decide, activate (which releases the jobs
    waiting for a model) and prune the artifacts of old versions."""
    with db.session() as session:
        current = active_version(session)
    active_metrics = active_stressed = None
    if (
        current is not None
        and current.version != candidate
        and rules.policy == ActivationPolicy.IF_BETTER
    ):
        active_metrics, active_stressed = measure_version(
            storage, current, holdout, threads, max_pixels, rules.min_sensitivity
        )
    decision = gate_decision(
        candidate_metrics, active_metrics, rules, candidate_stressed, active_stressed
    )
    decision = Decision(
        decision.activate,
        decision.reason,
        current.version if current else None,
        active_metrics,
        active_stressed,
    )
    if decision.activate:
        activate_version(db, candidate, release)
    with db.session() as session:
        prune_artifacts(session, storage, keep_inactive)
    return decision
