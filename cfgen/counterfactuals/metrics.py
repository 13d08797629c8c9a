"""Judging a counterfactual dataset: did the edit happen, did everything else stay, how far from the truth.

- effectiveness: the intervened attribute reads as its target value;
- preservation: the label and every attribute that was not intervened on read as their factual
  values; agreement: they read as the judges read the source image (the judges' own mistakes on
  the source do not count against the counterfactual);
- realism: Frechet distance between the judges' features of the source images and of the
  counterfactuals; and, for folders a trained generator made, composition and reversibility
  (``soundness.py``) of the first ``soundness_images`` edits, averaged within each group;
- error to the exact counterfactual (built-in datasets, ``--exact``): mean squared pixel difference,
  images in [0, 1], against the ground-truth re-rendering of the same edit, and the dataset's own
  judge-free shape errors (``BuiltinDataset.shape_fidelity``).

The readers ("judges", ``cfgen.judges``) must not share the shortcut they are meant to expose: on a
built-in dataset they use what its drawing is known to be, on any other a network trained with
group-balanced sampling. Each judge's accuracy on the source images is reported beside the scores:
it bounds what preservation can show.

Every score is also given for "rare" targets: edits whose resulting (label, attribute value) pair is
under ``rare_ratio`` times as frequent in the training split as independence would make it, and for
"absent" ones, pairs that never occur there: the edits a confounded generator gets wrong. Over all
edits, ``by_source`` gives the headline scores per value each variable has in the source image, which
shows where a generator's edits fail (an edit can fail for some starting values and not others).
"""

from pathlib import Path
from typing import Any

import numpy as np

from cfgen.counterfactuals.soundness import frechet_distance, generator_edit, soundness
from cfgen.data.adapters import open_dataset
from cfgen.data.counterfactuals import made_from
from cfgen.data.images import ImageFormat, load_images
from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable, read_imagefolder
from cfgen.datasets import BuiltinDataset, builtin_of
from cfgen.errors import CfgenError
from cfgen.judges import (
    DEFAULT_JUDGE_BATCH_SIZE,
    DEFAULT_JUDGE_IMAGES,
    DEFAULT_JUDGE_STEPS,
    default_judge_cache,
    load_or_train_judges,
)

METRICS_FILE = "metrics.json"
PROVENANCE = ("cf_source_row", "cf_intervened", "cf_counterfactual")
DEFAULT_RARE_RATIO = 0.2
DEFAULT_SOUNDNESS_IMAGES = 32  # edited 11 times each: composition's 10 and reversibility's 1


def rarity(source: MetadataTable, schema: Schema, cf: MetadataTable, rare_ratio: float) -> dict[str, np.ndarray]:
    """Which counterfactual rows land on a (label, attribute value) pair that is rare or absent in training.

    The pairs of a row: (label, each intervened attribute's target); when the label itself is the
    target, (new label, each attribute's value). Rare: seen fewer than ``rare_ratio`` times as often
    as independence of label and attribute would give.
    """
    train = source.split(source.training_split)
    label = schema.label
    rare = np.zeros(len(cf), dtype=bool)
    absent = np.zeros(len(cf), dtype=bool)
    if not label.is_discrete:
        return {"rare": rare, "absent": absent}
    labels = label.encode(train.column(label.name))
    cf_labels = label.encode(cf.column(label.name))
    intervened = [set(text.split("+")) for text in cf.column("cf_intervened")]
    for attribute in schema.attributes:
        if not attribute.is_discrete:
            continue
        values = attribute.encode(train.column(attribute.name))
        counts = np.zeros((label.num_values, attribute.num_values))
        np.add.at(counts, (labels, values), 1)
        expected = np.outer(counts.sum(1), counts.sum(0)) / max(len(labels), 1)
        cf_values = attribute.encode(cf.column(attribute.name))
        observed = counts[cf_labels, cf_values]
        involved = np.array([attribute.name in names or label.name in names for names in intervened])
        rare |= involved & (observed < rare_ratio * expected[cf_labels, cf_values])
        absent |= involved & (observed == 0)
    return {"rare": rare, "absent": absent}


def _parse_assignment(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if part)


def _scores(
    judged: dict[str, np.ndarray], sources: dict[str, np.ndarray], cf: MetadataTable, schema: Schema, rows: np.ndarray
) -> dict[str, Any]:
    """Effectiveness per intervened attribute; preservation and agreement per kept variable; over ``rows``.

    ``sources`` holds the judges' readings of each row's source image: agreement with them does not
    count the judges' own mistakes against the generator.
    """
    effective: dict[str, list[bool]] = {}
    preserved: dict[str, list[bool]] = {}
    agreed: dict[str, list[bool]] = {}
    all_effective, all_preserved, all_agreed, success = [], [], [], []
    for r in rows:
        targets = _parse_assignment(cf.columns["cf_counterfactual"][r])
        hit = kept = same = True
        for name, codes in judged.items():
            values = schema[name].values
            expected = values.index(cf.columns[name][r]) if cf.columns[name][r] in values else -1
            correct = bool(codes[r] == expected)
            if name in targets:
                effective.setdefault(name, []).append(correct)
                hit &= correct
            else:
                preserved.setdefault(name, []).append(correct)
                agreed.setdefault(name, []).append(bool(codes[r] == sources[name][r]))
                kept &= correct
                same &= agreed[name][-1]
        all_effective.append(hit)
        all_preserved.append(kept)
        all_agreed.append(same)
        success.append(hit and kept)
    return {
        "rows": len(rows),
        "effectiveness": {**{k: _mean(v) for k, v in effective.items()}, "all": _mean(all_effective)},
        "preservation": {**{k: _mean(v) for k, v in preserved.items()}, "all": _mean(all_preserved)},
        "agreement_with_source": {**{k: _mean(v) for k, v in agreed.items()}, "all": _mean(all_agreed)},
        "success": _mean(success),
    }


def _mean(values: Any) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else None


def _measured_means(columns: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float | None]:
    """Each per-row figure's mean over ``rows``, leaving out the rows it was not measured on (NaN)."""
    return {name: _mean(values[rows][~np.isnan(values[rows])]) for name, values in columns.items()}


def _exact_errors(
    cf: MetadataTable, exact_dir: Path, source: MetadataTable, image_format: ImageFormat, builtin: BuiltinDataset | None
) -> dict[str, np.ndarray]:
    """Per row, against the exact counterfactual of the same edit (NaN where none exists): pixel MSE (images
    in [0, 1]) and, on a built-in dataset, its judge-free shape errors."""
    exact = read_imagefolder(exact_dir)
    if not made_from(exact.card, source):
        raise CfgenError(f"--exact {exact_dir} was not made from {source.source} (its card names another dataset)")
    if not all(column in exact.columns for column in PROVENANCE):
        raise CfgenError(f"--exact {exact_dir} is not a counterfactual folder: it lacks the cf_ provenance columns")
    where = {key: i for i, key in enumerate(zip(*(exact.columns[c] for c in PROVENANCE), strict=True))}
    matched = [where.get(key, -1) for key in zip(*(cf.columns[c] for c in PROVENANCE), strict=True)]
    rows = np.array([i for i, m in enumerate(matched) if m >= 0], dtype=np.int64)
    if rows.size == 0:
        raise CfgenError(
            f"--exact {exact_dir} holds none of the edits in {cf.source}; make it with the same --intervene"
        )
    errors = {"mse_to_exact": np.full(len(cf), np.nan)}
    for start in range(0, rows.size, 1024):
        part = rows[start : start + 1024]
        generated = load_images(cf.image_paths[part], image_format)
        truth = load_images(exact.image_paths[[matched[i] for i in part]], image_format)
        errors["mse_to_exact"][part] = ((generated / 255 - truth / 255) ** 2).mean(axis=(1, 2, 3))
        if builtin is not None:
            for name, values in builtin.shape_fidelity(generated, truth).items():
                errors.setdefault(name, np.full(len(cf), np.nan))[part] = values
    return errors


def evaluate_counterfactuals(
    counterfactuals: str | Path,
    data: str | Path,
    exact: str | Path | None = None,
    label: str | None = None,
    attributes: list[str] | None = None,
    judge_cache: str | Path | None = None,
    judge_steps: int = DEFAULT_JUDGE_STEPS,
    judge_batch_size: int = DEFAULT_JUDGE_BATCH_SIZE,
    judge_images: int = DEFAULT_JUDGE_IMAGES,
    rare_ratio: float = DEFAULT_RARE_RATIO,
    seed: int = 0,
    progress: bool = False,
    soundness_images: int = DEFAULT_SOUNDNESS_IMAGES,
    data_format: str = "auto",
    resize: int | None = None,
) -> dict[str, Any]:
    """The metrics of a counterfactual folder made from ``data`` (see the module docstring)."""
    cf_dir, data = Path(counterfactuals), Path(data)
    cf = read_imagefolder(cf_dir)
    missing = [column for column in PROVENANCE if column not in cf.columns]
    if missing:
        raise CfgenError(
            f"{cf_dir} is not a counterfactual folder: it lacks {', '.join(missing)} (made by cfgen generate)"
        )
    source = open_dataset(data, data_format)
    if not made_from(cf.card, source):
        raise CfgenError(f"{cf_dir} was not made from {data} (its card names another source dataset); pass that --data")
    if not 0 < rare_ratio <= 1:
        raise CfgenError(f"--rare-ratio must be in (0, 1], not {rare_ratio}")
    schema = source.schema(label or cf.card.get("label"), attributes or cf.card.get("attributes"))
    judges = load_or_train_judges(
        source, schema, Path(judge_cache) if judge_cache else default_judge_cache(),
        judge_steps, judge_batch_size, judge_images, seed, progress, resize,
    )  # fmt: skip
    cf_images = load_images(cf.image_paths, judges.image_format, progress)
    judged, cf_features = judges.read(cf_images)

    source_rows, of_row = np.unique(cf.column("cf_source_row").astype(np.int64), return_inverse=True)
    source_images = load_images(source.image_paths[source_rows], judges.image_format)
    read_sources, real_features = judges.read(source_images)
    accuracy = {}
    for name, codes in read_sources.items():
        expected = schema[name].encode(source.column(name)[source_rows])
        accuracy[name] = float((codes == expected).mean())
    sources = {name: codes[of_row] for name, codes in read_sources.items()}  # aligned with the cf rows

    groups = {"all": np.ones(len(cf), dtype=bool), **rarity(source, schema, cf, rare_ratio)}
    errors = {}
    if exact is not None:
        errors = _exact_errors(cf, Path(exact), source, judges.image_format, builtin_of(source))

    measured = {}  # the generator's soundness, per counterfactual (NaN where not measured)
    edit = generator_edit(cf_dir) if soundness_images > 0 else None
    if edit is not None:
        first = np.arange(min(soundness_images, len(cf)))
        names = source.attribute_candidates()  # every variable a generator may condition on
        set_values = [{name: str(cf.column(name)[i]) for name in names} for i in first]
        source_values = [{name: str(source.column(name)[source_rows[of_row[i]]]) for name in names} for i in first]
        found = soundness(edit, source_images[of_row[first]], source_values, cf_images[first], set_values)
        for name, values in found.items():
            measured[name] = np.full(len(cf), np.nan)
            measured[name][first] = values

    def scores_of(rows: np.ndarray) -> dict[str, Any]:
        scores = _scores(judged, sources, cf, schema, rows) | _measured_means({**errors, **measured}, rows)
        enough = real_features is not None and len(rows) >= 2 and len(real_features) >= 2
        scores["realism_frechet"] = frechet_distance(real_features, cf_features[rows]) if enough else None
        return scores

    def headline(rows: np.ndarray) -> dict[str, Any]:
        scores = _scores(judged, sources, cf, schema, rows)
        overall = {key: scores[key]["all"] for key in ("effectiveness", "preservation")}
        return {"rows": len(rows), **overall, "success": scores["success"]} | _measured_means(errors, rows)

    breakdown = {}
    for group, mask in groups.items():
        rows = np.flatnonzero(mask)
        interventions = cf.column("cf_intervened")[rows]
        breakdown[group] = {
            **scores_of(rows),
            "by_intervention": {name: scores_of(rows[interventions == name]) for name in sorted(set(interventions))},
        }
    starting = {name: source.column(name)[source_rows][of_row] for name in judged}  # each edit's source values
    breakdown["all"]["by_source"] = {
        name: {value: headline(np.flatnonzero(values == value)) for value in sorted(set(values))}
        for name, values in starting.items()
    }
    return {
        "counterfactuals": str(cf_dir.resolve()),
        "data": str(data.resolve()),
        "exact": str(Path(exact).resolve()) if exact is not None else None,
        "exact_matched": int(np.sum(~np.isnan(errors["mse_to_exact"]))) if errors else None,
        "rare_definition": f"(label, value) pair seen < {rare_ratio} x its count under independence in training; "
        "absent: never seen",
        "judges": judges.record,
        "judge_accuracy_on_sources": accuracy,
        "soundness_images": int(np.sum(~np.isnan(measured["reversibility_l1"]))) if measured else 0,
        **breakdown,
    }
