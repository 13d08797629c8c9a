"""Accuracy overall and per group, the model-selection rule, and summaries over seeds.

A shortcut shows in the groups where the label and the spurious attribute disagree with the
training correlation, so every split reports per-group accuracy and the worst group, not only the
average. Tiny groups make the worst group a coin flip, so only groups with at least
``min_group_size`` images compete for the worst; every group is still listed with its count.

Model selection (the checkpoint kept for each seed): after every epoch the model is scored on the
validation split; the kept epoch has the best validation worst-group accuracy when spurious
attributes are given and some validation group has ``min_group_size`` images, else the best
validation accuracy; ties go to the earlier epoch. Without a validation split the last epoch is kept.
Test splits are scored once, on the kept model.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SELECTION_RULE = (
    "per seed, keep the epoch with the best validation worst-group accuracy (groups with at least "
    "min_group_size images) when spurious attributes are given and such a group exists, else the best "
    "validation accuracy; ties go to the earlier epoch; without a validation split, the last epoch"
)


def split_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    group_names: Sequence[str],
    min_group_size: int = 1,
) -> dict[str, Any]:
    """Accuracy, per-group accuracy and worst-group accuracy of one split.

    ``groups`` holds -1 for every row when there are no groups; then only the accuracy is given.
    """
    predictions, labels, groups = (np.asarray(a, dtype=np.int64) for a in (predictions, labels, groups))
    correct = predictions == labels
    result: dict[str, Any] = {
        "size": len(labels),
        "accuracy": float(correct.mean()) if len(labels) else None,
        "worst_group_accuracy": None,
        "worst_group": None,
        "groups": {},
    }
    if not group_names:
        return result
    counts = np.bincount(groups, minlength=len(group_names))
    hits = np.bincount(groups, weights=correct, minlength=len(group_names))
    for group in np.flatnonzero(counts):
        result["groups"][group_names[group]] = {
            "count": int(counts[group]),
            "correct": int(hits[group]),
            "accuracy": float(hits[group] / counts[group]),
        }
    eligible = [name for name, g in result["groups"].items() if g["count"] >= min_group_size]
    if eligible:
        worst = min(eligible, key=lambda name: result["groups"][name]["accuracy"])
        result["worst_group"] = worst
        result["worst_group_accuracy"] = result["groups"][worst]["accuracy"]
    return result


def selection_metric(validation: dict[str, Any] | None) -> str:
    """Which validation figure the rule maximises: worst_group_accuracy, accuracy or last_epoch."""
    if validation is None:
        return "last_epoch"
    return "worst_group_accuracy" if validation.get("worst_group_accuracy") is not None else "accuracy"


def select_epoch(history: Sequence[dict[str, Any]]) -> int:
    """Index into ``history`` (one entry per epoch, each with an optional "validation") kept by the rule."""
    if not history:
        raise ValueError("no epochs to select from")
    metric = selection_metric(history[0].get("validation"))
    if metric == "last_epoch":
        return len(history) - 1

    def score(index: int) -> tuple[float, float, int]:
        validation = history[index]["validation"]
        return (validation[metric], validation["accuracy"], -index)

    return max(range(len(history)), key=score)


def statistic(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean, sample standard deviation (0 for one value) and the values; None values are left out."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0
    return {"mean": float(np.mean(kept)), "std": std, "n": len(kept), "values": kept}


def summarize_splits(per_seed: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per split, the seeds' accuracy, worst-group accuracy and per-group accuracies as statistics."""
    summary: dict[str, Any] = {}
    for name in per_seed[0]:
        runs = [seed_splits[name] for seed_splits in per_seed]
        summary[name] = {
            "size": runs[0]["size"],
            "accuracy": statistic([run["accuracy"] for run in runs]),
            "worst_group_accuracy": statistic([run["worst_group_accuracy"] for run in runs]),
            "groups": {
                group: {
                    "count": runs[0]["groups"][group]["count"],
                    "accuracy": statistic([run["groups"][group]["accuracy"] for run in runs]),
                }
                for group in runs[0]["groups"]
            },
        }
    return summary


def format_statistic(stat: dict[str, Any] | None) -> str:
    """``0.912 ± 0.004`` over seeds, ``0.912`` for one seed (no spread to show), ``-`` for nothing."""
    if stat is None or stat["mean"] is None or math.isnan(stat["mean"]):
        return "-"
    if stat["n"] < 2:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
