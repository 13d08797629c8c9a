"""Choosing each attribute's inference settings on validation data (``cfgen tune-inference``), saved
with the generator as the defaults of ``cfgen generate`` and the pipeline.

Guidance and inversion depth trade the edit against what it must keep: more of either reaches the
target more often and keeps the rest less often, and what suits a thin stroke does not suit a
background. For every attribute, and every (depth, guidance, guidance start, negative, direction, condition
before guidance) of a grid,
the generator edits validation images to a random other value of it (points that differ only in
how they decode share one inversion and mask); the judges of
``evaluate-counterfactuals`` read the edits, and the setting with the most successes wins (the
target reached and every other judged variable read as on the source image), each success weighted
by how completely the edit reaches its target (``reach``: judges read values, not degrees, so a
colour that goes two thirds of the way would count as fully as an exact one, and the smaller change
would win the tie); among settings within half an edit of the best (``choose_setting``), the one
that changes the source least (mean absolute pixel change), the minimal edit: the judges read only
the labelled variables, and what no variable names (a bird's colour on a new background) should
stay too. The grid also holds localized edits (``InferenceSettings.localize``: the source kept
outside the model's own mask of what the edit changes, or of what the kept variables have no say
in), both inversions (DDIM's and the edit-friendly one) and, where asked, guidance away from
the source value rather than from the attribute dropped (``InferenceSettings.negative``; reach
rewards its overshoot on a well-trained model, so the default grid leaves it out) and, where asked,
guidance directions untied from what the training data tie to the attribute
(``InferenceSettings.direction``) and steps before a late guidance start that drop the edited
attribute (``InferenceSettings.before_guidance``), so each attribute gets the procedure that works
for it. At the best point of that grid the tuner then tries *holding* what the edit keeps
(``holds``: guidance of that weight toward its source value on every other variable, which stops a
thickness edit dragging a rare stroke colour toward the digit's usual one), and keeps it where it
wins by the same rule. The test split is never used: a
setting chosen there would flatter every figure measured on it.
"""

from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from cfgen.counterfactuals.generation import GeneratorSource, check_sources
from cfgen.data.adapters import open_dataset
from cfgen.data.images import load_images
from cfgen.data.table import SPLIT_COLUMN
from cfgen.errors import CfgenError
from cfgen.generator.inference import (
    BEFORE_GUIDANCE,
    DEFAULT_STEPS,
    DIRECTIONS,
    INVERSIONS,
    LOCALIZE,
    NEGATIVES,
    InferenceSettings,
    check_direction,
    held_guidance,
)
from cfgen.generator.model import Generator
from cfgen.generator.pipeline import store_inference
from cfgen.interventions import RANDOM, Intervention, Request, plan_requests
from cfgen.judges import (
    DEFAULT_JUDGE_BATCH_SIZE,
    DEFAULT_JUDGE_IMAGES,
    DEFAULT_JUDGE_STEPS,
    Judges,
    default_judge_cache,
    load_or_train_judges,
)
from cfgen.runtime import resolve_mixed_precision

DEPTHS = (0.4, 0.6, 0.8, 1.0)
GUIDANCE = (1.5, 2.0, 3.0, 5.0)
GUIDANCE_STARTS = (0.0,)  # guidance at every step; InferenceSettings.guidance_start says what a later start does
DEFAULT_SOURCES = 200
BATCH = 64  # edits made at once
HOLDS = ()  # hold weights tried at the grid's best point (none: the edit alone is guided)
# Negatives tried by default: guidance away from the source value pays where edits fall short of the
# target (a briefly trained model) and overshoots where they do not, and reach rewards the overshoot,
# so it is tried only where asked (docs/generator.md).
GUIDANCE_NEGATIVES = ("dropped",)
GUIDANCE_DIRECTIONS = ("joint",)
GUIDANCE_BEFORE = ("target",)  # what steps before a late guidance start are conditioned on, by default
SETTING_KEYS = (  # what a point sets
    "inversion_depth", "guidance", "localize", "inversion", "guidance_start", "negative", "direction",
    "before_guidance", "hold",
)  # fmt: skip
REACH_FRACTIONS = np.linspace(0.05, 1.0, 20)  # the points on the way from a source to its edit that reach reads
CRITERION = (
    "graded success: target reached and every other judged variable read as on the source, weighted by "
    "the edit's reach (the share of the way from the source to the edit read as the target); "
    "ties (within half an edit, 0.5 / edits, of the best): the least mean absolute pixel change"
)


def choose_setting(scores: list[dict[str, Any]], edits: int) -> dict[str, Any]:
    """The grid point to keep: graded success is a mean over ``edits`` edits, so differences under half of
    one edit's weight are below what the validation images resolve; among the points that close to the
    best, the one that changes the sources least (a plain edit that repaints the object as well as the
    background can reach a hair further than a localized one, and must not win by that)."""
    best = max(score["graded_success"] for score in scores)
    tied = [score for score in scores if score["graded_success"] >= best - 0.5 / edits]
    return min(tied, key=lambda score: score["change"])


def reach(judges: Judges, name: str, sources: np.ndarray, edits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per edit, the share of the straight way from its source to it (uint8 images) on which the judges
    read ``name`` as its target code: higher the further an edit goes past the judge's boundary, and
    0 where the target is never read."""
    shift = edits.astype(np.float32) - sources.astype(np.float32)
    read = [
        judges(np.rint(sources + fraction * shift).astype(np.uint8))[name] == targets for fraction in REACH_FRACTIONS
    ]
    return np.mean(read, axis=0)


def tune_inference(
    generator: str | Path,
    data: str | Path,
    split: str = "validation",
    attributes: list[str] | None = None,
    depths: tuple[float, ...] = DEPTHS,
    guidance: tuple[float, ...] = GUIDANCE,
    localize: tuple[str, ...] = LOCALIZE,
    steps: int = DEFAULT_STEPS,
    inversions: tuple[str, ...] = INVERSIONS,
    guidance_starts: tuple[float, ...] = GUIDANCE_STARTS,
    holds: tuple[float, ...] = HOLDS,
    negatives: tuple[str, ...] = GUIDANCE_NEGATIVES,
    directions: tuple[str, ...] = GUIDANCE_DIRECTIONS,
    before_guidance: tuple[str, ...] = GUIDANCE_BEFORE,
    sources: int = DEFAULT_SOURCES,
    judge_steps: int = DEFAULT_JUDGE_STEPS,
    judge_batch_size: int = DEFAULT_JUDGE_BATCH_SIZE,
    judge_images: int = DEFAULT_JUDGE_IMAGES,
    judge_cache: str | Path | None = None,
    mixed_precision: str = "auto",
    seed: int = 0,
    progress: bool = False,
    data_format: str = "auto",
    resize: int | None = None,
) -> dict[str, Any]:
    """Choose, save into ``generator`` and return each attribute's settings (``inference`` of its config).

    The judges are those ``evaluate_counterfactuals`` trains with the same ``judge_*`` options (and
    shares through the cache).
    """
    folder, data = Path(generator), Path(data)
    if sources < 1:
        raise CfgenError(f"--sources must be at least 1, not {sources}")
    if split.startswith("test"):
        raise CfgenError(f"inference settings are never chosen on a test split ({split!r}); use validation")
    model = Generator.load(folder)
    table = open_dataset(data, data_format)
    if SPLIT_COLUMN not in table.columns or split not in set(table.column(SPLIT_COLUMN)):
        splits = sorted(set(table.column(SPLIT_COLUMN))) if SPLIT_COLUMN in table.columns else []
        raise CfgenError(
            f"{data} has no {split!r} split to choose inference settings on; its splits: {', '.join(splits) or 'none'}"
        )
    rows = np.flatnonzero(table.column(SPLIT_COLUMN) == split)[:sources]
    check_sources(model, table.select(rows), str(folder), resize)
    editable = [v.name for v in model.schema.attributes if v.is_discrete and v.num_values > 1]
    attributes = list(attributes or editable)
    unknown = [name for name in attributes if name not in editable]
    if unknown:
        raise CfgenError(f"cannot tune edits of {unknown[0]!r}; attributes the generator edits: {', '.join(editable)}")
    if not all((depths, guidance, localize, inversions, guidance_starts, negatives, directions, before_guidance)):
        raise CfgenError(
            "give at least one inversion depth, guidance weight, guidance start, localize choice, inversion, "
            "negative, direction and condition before guidance to choose from"
        )
    bad = [hold for hold in holds if not (hold > 0 and np.isfinite(hold))]
    if bad:
        raise CfgenError(f"hold weights must be positive numbers, not {bad[0]}")
    for given, valid, what in (
        (inversions, INVERSIONS, "inversion"),
        (localize, LOCALIZE, "localize choice"),
        (negatives, NEGATIVES, "negative"),
        (directions, DIRECTIONS, "direction"),
        (before_guidance, BEFORE_GUIDANCE, "condition before guidance"),
    ):
        unknown = [name for name in given if name not in valid]
        if unknown:
            raise CfgenError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(valid)}")
    if "untied" in directions:
        check_direction(model, "untied")
    schema = model.schema
    judges = load_or_train_judges(
        table, schema, Path(judge_cache) if judge_cache else default_judge_cache(), judge_steps,
        judge_batch_size, judge_images, seed, progress, resize=resize,
    )  # fmt: skip
    on_sources = judges(load_images(table.image_paths[rows], judges.image_format))
    precision = resolve_mixed_precision(mixed_precision)

    def score(
        name: str, requests: list[Request], targets: np.ndarray, originals: np.ndarray, points: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The validation edits of ``name`` at grid points (``SETTING_KEYS``) that differ only in how they
        decode, read by the judges: the sources are inverted, and their masks drawn, once for all."""
        settings = [
            InferenceSettings(
                steps,
                point["inversion_depth"],
                {name: point["guidance"], **held_guidance(schema, [name], point["hold"])},
                point["localize"],
                point["inversion"],
                point["guidance_start"],
                point["negative"],
                point["direction"],
                point["before_guidance"],
            )
            for point in points
        ]
        source = GeneratorSource(model, folder, settings[0], precision)
        batches = [requests[start : start + BATCH] for start in range(0, len(requests), BATCH)]
        made = [source.make_each(table, batch, settings) for batch in batches]  # per batch, per point
        scored = []
        for index, point in enumerate(points):
            edits = np.concatenate([each[index] for each in made])
            read = judges(edits)
            hit = read[name] == targets
            kept = np.ones(len(requests), dtype=bool)
            for other, codes in read.items():
                if other != name:
                    kept &= codes == on_sources[other]
            reached = reach(judges, name, originals, edits, targets)
            scored.append({
                **point,
                "effectiveness": float(hit.mean()),
                "kept": float(kept.mean()),
                "success": float((hit & kept).mean()),
                "reach": float(reached[hit].mean()) if hit.any() else 0.0,
                "graded_success": float(((hit & kept) * reached).mean()),
                "change": float(np.abs(edits / 255 - originals / 255).mean()),
            })  # fmt: skip
            if progress:
                print(f"{name}: " + ", ".join(f"{key} {point[key]}" for key in SETTING_KEYS) + ": " + ", ".join(
                    f"{key} {scored[-1][key]:.3f}" for key in ("effectiveness", "kept", "success", "graded_success")
                ), flush=True)  # fmt: skip
        return scored

    abductions = [  # each with the points decoded from it; held at none: a hold is tried at the best point
        [
            dict(
                zip(
                    SETTING_KEYS,
                    (depth, weight, local, inversion, start, negative, direction, before, 0.0),
                    strict=True,
                )
            )
            for weight, start, negative, direction in product(guidance, guidance_starts, negatives, directions)
            for before in (before_guidance if start else BEFORE_GUIDANCE[:1])  # at 0 no step comes before guidance
        ]
        for inversion, local, depth in product(inversions, localize, depths)
    ]
    chosen, grid = {}, {}
    for name in attributes:
        requests = plan_requests(table, schema, Intervention(((name, RANDOM),)), seed=seed, rows=rows.tolist())
        targets = schema[name].encode(np.array([request.target[name] for request in requests]))
        originals = load_images(table.image_paths[[request.row for request in requests]], model.image_format)
        scores = [scored for points in abductions for scored in score(name, requests, targets, originals, points)]
        best = choose_setting(scores, len(requests))
        held = [{**{key: best[key] for key in SETTING_KEYS}, "hold": hold} for hold in holds]
        held_scores = score(name, requests, targets, originals, held) if held else []
        scores += held_scores
        best = choose_setting([best, *held_scores], len(requests))  # the grid's best, held or not
        chosen[name] = {
            "steps": steps,
            **{key: best[key] for key in SETTING_KEYS},
        }
        grid[name] = scores
    inference = {
        "attributes": {**model.inference.get("attributes", {}), **chosen},
        "selection": {
            "data": str(data.resolve()),
            "split": split,
            "sources": len(rows),
            "criterion": CRITERION,
            "judges": judges.record,
            "grid": {**model.inference.get("selection", {}).get("grid", {}), **grid},
        },
    }
    store_inference(folder, inference)
    return inference
