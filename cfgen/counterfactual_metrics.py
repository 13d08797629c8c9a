"""Judging a counterfactual dataset: did the edit happen, did everything else stay, how far from the truth.

- effectiveness: the intervened attribute reads as its target value;
- preservation: the label and every attribute that was not intervened on read as their factual
  values; agreement: they read as the judges read the source image (the judges' own mistakes on
  the source do not count against the counterfactual);
- realism: Frechet distance between the judges' features of the source images and of the
  counterfactuals; and, for folders a trained generator made, composition and reversibility
  (``soundness.py``) of the first ``soundness_images`` edits, averaged within each group;
- error to the exact counterfactual (built-in datasets, ``--exact``): mean squared pixel difference,
  images in [0, 1], against the ground-truth re-rendering of the same edit; and, free of any judge,
  shape fidelity: the IoU of the stroke masks of the edit and of the exact counterfactual, and the
  difference of their stroke widths in pixels (a stroke mask holds the pixels farther from the
  image's frame colour than half its stroke contrast; width = 2 x area / perimeter).

The readers ("judges") must not share the shortcut they are meant to expose. On the built-in
colored digits the mechanism is known: colours are read from the pixels (the background from the
image border, the foreground as the palette colour that best explains every pixel as a mix of it and
the background), and the digit and the other attributes by a small CNN that reads the strokes
without their colours (``stroke_map``), trained on digits re-rendered with every factor drawn
independently, from MNIST digits that no validation or test image uses. On
other datasets a small CNN per dataset reads every discrete variable, trained on the training split
with group-balanced sampling (every combination of label and attribute values equally often). Judges
are cached, keyed by everything they depend on. Each judge's accuracy on the source images is
reported beside the scores: it bounds what preservation can show.

Every score is also given for "rare" targets: edits whose resulting (label, attribute value) pair is
under ``rare_ratio`` times as frequent in the training split as independence would make it, and for
"absent" ones, pairs that never occur there: the edits a confounded generator gets wrong.
"""

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfgen.cli_options import add_output_arguments, column_list
from cfgen.data import colored_mnist
from cfgen.data.counterfactuals import metadata_digest
from cfgen.data.images import ImageFormat, check_images, load_images, to_model_range
from cfgen.data.schema import Schema
from cfgen.data.table import SPLIT_COLUMN, MetadataTable, read_imagefolder
from cfgen.errors import CfgenError
from cfgen.generator.deconfounding import JUDGES_CONFIG, JUDGES_VERSION, AttributeJudges, train_judges
from cfgen.io import atomic_output_dir, write_json, write_run_record
from cfgen.soundness import frechet_distance, generator_edit, soundness

METRICS_FILE = "metrics.json"
PIXEL_JUDGED = {"fg_color": colored_mnist.FG_COLORS, "bg_color": colored_mnist.BG_COLORS}
BORDER = 2  # pixels of the frame read as background on the built-in digits
MIN_STROKE_CONTRAST = 32.0  # RGB distance below which an image is taken to hold no stroke at all
PROVENANCE = ("cf_source_row", "cf_intervened", "cf_counterfactual")
DEFAULT_JUDGE_STEPS = 2000
DEFAULT_JUDGE_BATCH_SIZE = 128
DEFAULT_JUDGE_IMAGES = 20000
DEFAULT_RARE_RATIO = 0.2
DEFAULT_SOUNDNESS_IMAGES = 32  # edited 11 times each: composition's 10 and reversibility's 1


def default_judge_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cfgen" / "judges"


@dataclass
class Judges:
    """Reads discrete variables off images: palette colours from pixels, the rest with a CNN."""

    schema: Schema
    network: AttributeJudges | None
    pixel: tuple[str, ...]
    image_format: ImageFormat
    record: dict
    colour_free: bool = False  # the network reads ``stroke_map`` of the images (built-in digits)

    def __call__(self, images: np.ndarray, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Codes (in the schema's vocabulary order) of every judged variable, for uint8 (N, H, W, C) images."""
        read: dict[str, np.ndarray] = {}
        if self.pixel:
            parts = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
            backgrounds = [_border_colour(part) for part in parts]
            if "bg_color" in self.pixel:
                found = np.concatenate([_nearest(b, colored_mnist.BG_COLORS) for b in backgrounds])
                read["bg_color"] = self._codes("bg_color", found)
            if "fg_color" in self.pixel:
                found = np.concatenate([_foreground(p, b) for p, b in zip(parts, backgrounds, strict=True)])
                read["fg_color"] = self._codes("fg_color", found)
        if self.network is not None:
            device = next(self.network.parameters()).device
            outputs: list[list[np.ndarray]] = [[] for _ in self.network.names]
            with torch.inference_mode():
                for start in range(0, len(images), batch_size):
                    part = images[start : start + batch_size]
                    _, logits = self.network(self._input(part).to(device))
                    for j, head in enumerate(logits):
                        outputs[j].append(head.argmax(1).cpu().numpy())
            for j, name in enumerate(self.network.names):
                read[name] = np.concatenate(outputs[j])
        return read

    def features(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray | None:
        """(N, D) features of the network's trunk for uint8 images; None when every variable is read from pixels."""
        if self.network is None:
            return None
        device = next(self.network.parameters()).device
        with torch.inference_mode():
            parts = [self.network(self._input(images[s : s + batch_size]).to(device))[0].float().cpu().numpy()
                     for s in range(0, len(images), batch_size)]  # fmt: skip
        return np.concatenate(parts)

    def _input(self, images: np.ndarray) -> torch.Tensor:
        return to_model_range(stroke_map(images) if self.colour_free else images)

    def _codes(self, name: str, palette_names: np.ndarray) -> np.ndarray:
        variable = self.schema[name]
        lookup = {
            value: variable.values.index(value) if value in variable.values else -1 for value in set(palette_names)
        }
        return np.array([lookup[value] for value in palette_names], dtype=np.int64)


def _border_colour(images: np.ndarray) -> np.ndarray:
    """(N, 3) median colour of each image's frame, where the built-in digits never reach."""
    frame = np.ones(images.shape[1:3], dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    return np.median(images[:, frame, :].astype(np.float64), axis=1)


def _nearest(colours: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    names = list(palette)
    entries = np.array([palette[name] for name in names], dtype=np.float64)
    distance = ((colours[:, None, :] - entries[None]) ** 2).sum(-1)
    return np.array(names, dtype=object)[distance.argmin(1)]


def _foreground(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The palette colour c that best explains every pixel p as bg + alpha (c - bg), alpha in [0, 1]."""
    names = list(colored_mnist.FG_COLORS)
    pixels = images.reshape(len(images), -1, 3).astype(np.float64) - background[:, None, :]
    residuals = []
    for name in names:
        direction = np.asarray(colored_mnist.FG_COLORS[name], dtype=np.float64)[None, :] - background  # (N, 3)
        span = np.maximum((direction**2).sum(-1), 1e-6)[:, None]
        alpha = np.clip((pixels * direction[:, None, :]).sum(-1) / span, 0, 1)
        residuals.append(((pixels - alpha[..., None] * direction[:, None, :]) ** 2).sum((1, 2)))
    return np.array(names, dtype=object)[np.argmin(residuals, axis=0)]


def is_builtin(table: MetadataTable) -> bool:
    return (table.card.get("builtin") or {}).get("name") == colored_mnist.BUILTIN_NAME


def load_or_train_judges(
    data: Path,
    table: MetadataTable,
    schema: Schema,
    cache: Path,
    steps: int = DEFAULT_JUDGE_STEPS,
    batch_size: int = DEFAULT_JUDGE_BATCH_SIZE,
    images: int = DEFAULT_JUDGE_IMAGES,
    seed: int = 0,
    progress: bool = False,
) -> Judges:
    """The judges of a dataset's discrete variables, from the cache or trained (then cached)."""
    builtin = is_builtin(table)
    pixel = tuple(name for name in PIXEL_JUDGED if builtin and name in schema.names)
    learned = [v for v in schema.variables if v.is_discrete and v.name not in pixel]
    if builtin:
        size = int(table.card["builtin"]["config"]["image_size"])
        image_format = ImageFormat((size, size), "RGB")
        held_out = _held_out_digits(table)
        # what the judges see depends only on the digits kept out, so datasets that differ in their
        # confounding strength alone share them
        identity = hashlib.sha256(f"{colored_mnist.DIGITS_SHA256}:{held_out.tolist()}".encode()).hexdigest()
    else:
        image_format = check_images(_training_rows(table))
        identity = metadata_digest(data)
    key = {
        "version": JUDGES_VERSION,
        "data": identity,
        "builtin": builtin,
        "variables": [[v.name, list(v.values)] for v in learned],
        "format": [list(image_format.size), image_format.mode],
        "steps": steps,
        "batch_size": batch_size,
        "images": images if builtin else None,
        "input": "stroke map" if builtin else "image",
        "seed": seed,
    }
    record = {"pixel": list(pixel), "learned": [v.name for v in learned], "cache_key": key}
    if not learned:
        return Judges(schema, None, pixel, image_format, record, builtin)
    folder = cache / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (folder / JUDGES_CONFIG).is_file():
        if builtin:
            pixels, codes = _rendered_judge_data(held_out, learned, images, image_format.size[0], seed)
            pixels = stroke_map(pixels)
        else:
            rows = _training_rows(table)
            pixels = load_images(rows.image_paths, image_format, progress)
            codes = np.stack([v.encode(rows.column(v.name)) for v in learned], axis=1)
        network, trained = train_judges(
            pixels, codes, [v.name for v in learned], [v.num_values for v in learned],
            steps, batch_size, seed=seed, device=device, progress=progress,
        )  # fmt: skip
        partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
        network.save(partial, {**trained, "key": key})
        os.replace(partial, folder)
    network, saved = AttributeJudges.load(folder)
    record.update(folder=str(folder), training={k: v for k, v in saved.items() if k != "key"})
    return Judges(schema, network.to(device), pixel, image_format, record, builtin)


def _training_rows(table: MetadataTable) -> MetadataTable:
    return table.split("train" if "train" in table.splits else None)


def _held_out_digits(table: MetadataTable) -> np.ndarray:
    """The MNIST digits of validation and test rows (of every row, when there are no splits)."""
    if SPLIT_COLUMN not in table.columns:
        return np.unique(table.column(colored_mnist.SOURCE_COLUMN).astype(np.int64))
    rows = table.column(SPLIT_COLUMN) != "train"
    return np.unique(table.column(colored_mnist.SOURCE_COLUMN)[rows].astype(np.int64))


def _rendered_judge_data(
    held_out: np.ndarray, variables: list, count: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Digits no validation or test row uses, re-rendered with every factor drawn independently."""
    digits, labels = colored_mnist.load_digits()
    pool = np.setdiff1d(np.arange(len(digits)), held_out)
    rng = np.random.default_rng([seed, 7])
    chosen = np.resize(rng.permutation(pool), count)  # past the pool, digits return with new factors
    attributes = [factor for factor in colored_mnist.FACTORS if factor.apply is not None]
    images, columns = [], {v.name: [] for v in variables}
    for index in chosen:
        factors = {factor.name: factor.values[rng.integers(len(factor.values))] for factor in attributes}
        images.append(colored_mnist.render(digits, int(index), factors, image_size))
        factors[colored_mnist.LABEL] = str(labels[index])
        for v in variables:
            columns[v.name].append(factors[v.name])
    codes = np.stack([v.encode(np.array(columns[v.name])) for v in variables], axis=1)
    return np.stack(images), codes


def rarity(source: MetadataTable, schema: Schema, cf: MetadataTable, rare_ratio: float) -> dict[str, np.ndarray]:
    """Which counterfactual rows land on a (label, attribute value) pair that is rare or absent in training.

    The pairs of a row: (label, each intervened attribute's target); when the label itself is the
    target, (new label, each attribute's value). Rare: seen fewer than ``rare_ratio`` times as often
    as independence of label and attribute would give.
    """
    train = _training_rows(source)
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


def _stroke_distance(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's RGB distance from its image's frame colour (N, H, W), and each image's stroke
    contrast (N,): its 98th percentile distance, at least ``MIN_STROKE_CONTRAST``."""
    offset = images.astype(np.float64) - _border_colour(images)[:, None, None, :]
    distance = np.sqrt((offset**2).sum(-1))
    contrast = np.maximum(np.percentile(distance.reshape(len(images), -1), 98, axis=1), MIN_STROKE_CONTRAST)
    return distance, contrast


def stroke_map(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 1): the built-in digits' strokes without their colours (distance from the frame
    colour over the stroke contrast), which is what the learned built-in judges read."""
    distance, contrast = _stroke_distance(images)
    return (np.clip(distance / contrast[:, None, None], 0, 1) * 255).round().astype(np.uint8)[..., None]


def stroke_masks(images: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: the pixels of uint8 (N, H, W, 3) images farther from their frame's colour than
    half the image's stroke contrast: the shape whatever its colours."""
    distance, contrast = _stroke_distance(images)
    return distance > contrast[:, None, None] / 2


def stroke_width(masks: np.ndarray) -> np.ndarray:
    """Mean stroke width in pixels of each (H, W) mask: 2 x area / perimeter (pixel edges between stroke
    and background), which tends to the width of a long stroke."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    edges = (padded[:, 1:, :] != padded[:, :-1, :]).sum((1, 2)) + (padded[:, :, 1:] != padded[:, :, :-1]).sum((1, 2))
    return 2 * masks.sum((1, 2)) / np.maximum(edges, 1)


def stroke_fidelity(generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: IoU of the stroke masks of ``generated`` and ``truth`` (uint8 RGB) and their stroke-width
    difference in pixels."""
    edit, exact = stroke_masks(generated), stroke_masks(truth)
    union = (edit | exact).sum((1, 2))
    iou = np.where(union > 0, (edit & exact).sum((1, 2)) / np.maximum(union, 1), 1.0)
    return {"stroke_iou": iou, "stroke_width_error": np.abs(stroke_width(edit) - stroke_width(exact))}


def _exact_errors(
    cf: MetadataTable, exact_dir: Path, data: Path, image_format: ImageFormat, builtin: bool
) -> dict[str, np.ndarray]:
    """Per row, against the exact counterfactual of the same edit (NaN where none exists): pixel MSE (images
    in [0, 1]) and, on the built-in digits, stroke IoU and stroke-width error."""
    exact = read_imagefolder(exact_dir)
    recorded = (exact.card.get("counterfactuals") or {}).get("source_metadata_sha256")
    if recorded != metadata_digest(data):
        raise CfgenError(f"--exact {exact_dir} was not made from {data} (its card names another source dataset)")
    if not all(column in exact.columns for column in PROVENANCE):
        raise CfgenError(f"--exact {exact_dir} is not a counterfactual folder: it lacks the cf_ provenance columns")
    where = {key: i for i, key in enumerate(zip(*(exact.columns[c] for c in PROVENANCE), strict=True))}
    matched = [where.get(key, -1) for key in zip(*(cf.columns[c] for c in PROVENANCE), strict=True)]
    rows = np.array([i for i, m in enumerate(matched) if m >= 0], dtype=np.int64)
    if rows.size == 0:
        raise CfgenError(
            f"--exact {exact_dir} holds none of the edits in {cf.source}; make it with the same --intervene"
        )
    names = ["mse_to_exact", *(["stroke_iou", "stroke_width_error"] if builtin else [])]
    errors = {name: np.full(len(cf), np.nan) for name in names}
    for start in range(0, rows.size, 1024):
        part = rows[start : start + 1024]
        generated = load_images(cf.image_paths[part], image_format)
        truth = load_images(exact.image_paths[[matched[i] for i in part]], image_format)
        errors["mse_to_exact"][part] = ((generated / 255 - truth / 255) ** 2).mean(axis=(1, 2, 3))
        if builtin:
            for name, values in stroke_fidelity(generated, truth).items():
                errors[name][part] = values
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
) -> dict[str, Any]:
    """The metrics of a counterfactual folder made from ``data`` (see the module docstring)."""
    cf_dir, data = Path(counterfactuals), Path(data)
    cf = read_imagefolder(cf_dir)
    missing = [column for column in PROVENANCE if column not in cf.columns]
    if missing:
        raise CfgenError(
            f"{cf_dir} is not a counterfactual folder: it lacks {', '.join(missing)} (made by cfgen generate)"
        )
    source = read_imagefolder(data)
    recorded = (cf.card.get("counterfactuals") or {}).get("source_metadata_sha256")
    if recorded != metadata_digest(data):
        raise CfgenError(f"{cf_dir} was not made from {data} (its card names another source dataset); pass that --data")
    if not 0 < rare_ratio <= 1:
        raise CfgenError(f"--rare-ratio must be in (0, 1], not {rare_ratio}")
    schema = source.schema(label, attributes)
    judges = load_or_train_judges(
        data, source, schema, Path(judge_cache) if judge_cache else default_judge_cache(),
        judge_steps, judge_batch_size, judge_images, seed, progress,
    )  # fmt: skip
    cf_images = load_images(cf.image_paths, judges.image_format, progress)
    judged = judges(cf_images)

    source_rows, of_row = np.unique(cf.column("cf_source_row").astype(np.int64), return_inverse=True)
    source_images = load_images(source.image_paths[source_rows], judges.image_format)
    read_sources = judges(source_images)
    real_features, cf_features = judges.features(source_images), judges.features(cf_images)
    accuracy = {}
    for name, codes in read_sources.items():
        expected = schema[name].encode(source.column(name)[source_rows])
        accuracy[name] = float((codes == expected).mean())
    sources = {name: codes[of_row] for name, codes in read_sources.items()}  # aligned with the cf rows

    groups = {"all": np.ones(len(cf), dtype=bool), **rarity(source, schema, cf, rare_ratio)}
    errors = {}
    if exact is not None:
        errors = _exact_errors(cf, Path(exact), data, judges.image_format, is_builtin(source))

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
        scores = _scores(judged, sources, cf, schema, rows)
        for name, values in {**errors, **measured}.items():
            scores[name] = _mean(values[rows][~np.isnan(values[rows])])
        enough = real_features is not None and len(rows) >= 2 and len(real_features) >= 2
        scores["realism_frechet"] = frechet_distance(real_features, cf_features[rows]) if enough else None
        return scores

    breakdown = {}
    for group, mask in groups.items():
        rows = np.flatnonzero(mask)
        interventions = cf.column("cf_intervened")[rows]
        breakdown[group] = {
            **scores_of(rows),
            "by_intervention": {name: scores_of(rows[interventions == name]) for name in sorted(set(interventions))},
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate-counterfactuals`` options."""
    parser.add_argument("--counterfactuals", required=True, help="counterfactual folder (cfgen generate)")
    parser.add_argument("--data", required=True, help="the dataset folder the counterfactuals were made from")
    parser.add_argument(
        "--exact", help="exact counterfactuals of the same edits (built-in datasets: --generator exact)"
    )
    add_output_arguments(parser, "metrics folder")
    parser.add_argument("--label", help="label column (default: the dataset card's)")
    parser.add_argument("--attributes", type=column_list, help="attribute columns (default: the card's, or all)")
    parser.add_argument("--rare-ratio", type=float, default=DEFAULT_RARE_RATIO, help="see docs/generator.md")
    parser.add_argument("--judge-cache", help=f"where judges are kept (default {default_judge_cache()})")
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS, help="training steps of the judges")
    parser.add_argument("--judge-batch-size", type=int, default=DEFAULT_JUDGE_BATCH_SIZE, help="batch of the judges")
    parser.add_argument("--judge-images", type=int, default=DEFAULT_JUDGE_IMAGES, help="re-rendered (built-in only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the judges' training")
    parser.add_argument(
        "--soundness-images",
        type=int,
        default=DEFAULT_SOUNDNESS_IMAGES,
        help="edits whose composition and reversibility are measured, when a trained generator made the folder "
        "(0: none)",
    )


def run(args: argparse.Namespace) -> None:
    """``cfgen evaluate-counterfactuals``: write metrics.json and print the headline numbers."""
    with atomic_output_dir(args.out, args.overwrite) as staging:
        metrics = evaluate_counterfactuals(
            args.counterfactuals, args.data, args.exact, args.label, args.attributes, args.judge_cache,
            args.judge_steps, args.judge_batch_size, args.judge_images, args.rare_ratio, args.seed, progress=True,
            soundness_images=args.soundness_images,
        )  # fmt: skip
        write_json(staging / METRICS_FILE, metrics)
        write_run_record(staging, {k: v for k, v in vars(args).items() if k != "handler"}, seed=args.seed)
    matched, rows = metrics["exact_matched"], metrics["all"]["rows"]
    if matched is not None and matched < rows:
        print(f"note: only {matched} of {rows} counterfactuals have an exact counterpart in {args.exact}; "
              "the figures against exact cover those")  # fmt: skip
    for group in ("all", "rare", "absent"):
        scores = metrics[group]
        line = f"{group:>6}: {scores['rows']} rows, effectiveness {_fmt(scores['effectiveness']['all'])}, "
        line += f"preservation {_fmt(scores['preservation']['all'])}"
        if "mse_to_exact" in scores:
            line += f", MSE to exact {_fmt(scores['mse_to_exact'], 4)}"
        if "stroke_iou" in scores:
            line += f", stroke IoU {_fmt(scores['stroke_iou'])}, width error {_fmt(scores['stroke_width_error'])} px"
        line += f", realism (Frechet) {_fmt(scores['realism_frechet'], 2)}"
        print(line)
    if metrics["soundness_images"]:
        scores = metrics["all"]
        print(f"soundness on {metrics['soundness_images']} edits: composition L1 after 1 edit "
              f"{_fmt(scores['composition_l1_1'], 4)}, after 10 {_fmt(scores['composition_l1_10'], 4)}; "
              f"reversibility L1 {_fmt(scores['reversibility_l1'], 4)}")  # fmt: skip
    print(f"wrote {Path(args.out) / METRICS_FILE}")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
