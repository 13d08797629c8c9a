"""Writing a counterfactual dataset with a trained generator or a built-in dataset's exact renderer.

One mechanism serves both sources. The intervention is planned once, the same on every process,
so request ``i`` is an identity: it goes to process ``i % world`` and its image to ``image_name(i)``
inside a staging folder whose name follows from ``--out`` (``.CF.partial``). Each image is written
atomically (temporary file, then ``os.replace``), so after an interruption every file present is
complete; re-running the same command skips them and makes the rest. The settings a run was started
with are stored in the staging folder and a re-run with other settings is refused, so one folder
never mixes two kinds of counterfactuals. When every request has its image, the main process writes
metadata.csv, the card, a grid of examples and the run record, and renames the folder into place.

Requests are made in fixed batches (process ``r`` takes its requests in order, ``--batch-size`` at a
time); a batch with any image missing is recomputed whole, so a resumed run gives the very images
an uninterrupted one would (floating-point results can depend on the batch they are computed in).
"""

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from PIL import Image
from tqdm.auto import tqdm

from cfgen.data.adapters import open_dataset
from cfgen.data.counterfactuals import dataset_digest, image_name, write_counterfactual_folder
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.schema import Schema, present_values
from cfgen.data.table import SPLIT_COLUMN, MetadataTable, read_imagefolder
from cfgen.data.tensors import to_model_range, to_uint8
from cfgen.datasets import BUILTIN, builtin_of
from cfgen.errors import CfgenError
from cfgen.generator.inference import SAVED_BEFORE, InferenceSettings, settings_for
from cfgen.generator.model import CONFIG_FILE, Generator
from cfgen.generator.pipeline import PIPELINE_INDEX, CounterfactualPipeline
from cfgen.grids import labelled_grid
from cfgen.interventions import Request, parse_intervention, plan_requests
from cfgen.io import check_output_dir, create_folder, write_json, write_run_record
from cfgen.runtime import autocast_dtype, resolve_mixed_precision

EXACT = "exact"  # the --generator value that asks a built-in dataset for its exact counterfactuals
SETTINGS_FILE = "generation_settings.json"
GRID_FILE = "examples.png"
GRID_SOURCES = 8  # columns of the example grid
GRID_COUNTERFACTUALS = 9  # rows of counterfactuals under the source row


class CounterfactualSource(Protocol):
    """What makes the images: the built-in renderer or a trained generator."""

    name: str  # recorded in the cf_generator column
    schema: Schema

    def settings(self) -> dict[str, Any]:
        """Everything that changes the images, for the resume check and the run record."""
        ...

    def make(self, table: MetadataTable, requests: Sequence[Request]) -> np.ndarray:
        """uint8 (N, H, W, C) images, one per request."""
        ...


class GeneratorSource:
    """A trained generator, as a ``CounterfactualPipeline``: inversion under the factual values, decoding under
    the targets."""

    def __init__(self, generator: Generator, folder: Path, inference: InferenceSettings, mixed_precision: str):
        self.generator = generator
        self.folder = folder.resolve()
        self.name = str(self.folder)
        self.schema = generator.schema
        self.inference = inference
        self.mixed_precision = mixed_precision
        self.device = process_state().device
        self.pipeline = CounterfactualPipeline.from_generator(generator).to(self.device)
        generator.unet.eval()
        generator.encoder.eval()

    def settings(self) -> dict[str, Any]:
        return {
            "generator": self.name,
            "generator_sha256": folder_digest(self.folder),
            **self.inference.to_dict(),
            "mixed_precision": self.mixed_precision,
        }

    def make(self, table: MetadataTable, requests: Sequence[Request]) -> np.ndarray:
        return self.make_each(table, requests, [self.inference])[0]

    def make_each(
        self, table: MetadataTable, requests: Sequence[Request], decodings: Sequence[InferenceSettings]
    ) -> list[np.ndarray]:
        """The requests' images under each of ``decodings``: settings that differ from this source's
        only in how they decode (guidance, its start, the negative, the direction, the steps before guidance), so
        the sources are inverted, and the edit's mask drawn, once for all of them."""
        abduction = ("steps", "inversion_depth", "inversion", "localize")  # decoding sets the others
        ours = [getattr(self.inference, key) for key in abduction]
        if any([getattr(settings, key) for key in abduction] != ours for settings in decodings):
            raise ValueError(f"settings decoded from one abduction must share its {', '.join(abduction)}")
        # each source image is inverted once, however many counterfactuals the batch asks of it
        rows = list(dict.fromkeys(request.row for request in requests))
        of_request = [rows.index(request.row) for request in requests]
        sources = table.select(np.array(rows))
        images = to_model_range(load_images(sources.image_paths, self.generator.image_format)).to(self.device)
        factual = self.generator.conditions(sources).to(self.device)
        target = factual[of_request].clone()
        for k, request in enumerate(requests):
            for name, value in request.target.items():
                target[k, self.schema.names.index(name)] = self.generator.condition_value(name, value)
        dtype = autocast_dtype(self.mixed_precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            path = self.pipeline.inversion_path(images, factual, self.inference).select(of_request)
            mask = self.pipeline.edit_mask(path, factual[of_request], target, self.inference)
            return [to_uint8(self.pipeline.decode(path, target, settings, mask)) for settings in decodings]


def folder_digest(folder: Path) -> str:
    """SHA-256 over a generator's model files: a retrained generator at the same path is another generator."""
    digest = hashlib.sha256()
    components = ("unet", "attribute_encoder", "scheduler", "inverse_scheduler")
    for path in sorted(p for sub in components for p in (folder / sub).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    for record in (PIPELINE_INDEX, CONFIG_FILE):
        if (folder / record).is_file():
            digest.update((folder / record).read_bytes())
    return digest.hexdigest()


def check_sources(model: Generator, rows: MetadataTable, folder: str, resize: int | None = None) -> None:
    """Source rows a generator can edit: its columns and values, and images in its format."""
    check_dataset_matches(model.schema, rows, folder)
    check_image_format(check_images(rows, resize), model.image_format, folder, resize)


def check_image_format(found: ImageFormat, expected: ImageFormat, generator: str, resize: int | None) -> None:
    """Source images in the generator's format, or a resize to it that the user asked for."""
    if found == expected:
        return
    (width, height), mode = expected.size, expected.mode
    wanted = f"{width}x{height} {mode}"
    resizable = width == height and mode == "RGB"  # what --resize can produce
    if resize is None:
        fix = f"pass --resize {width} to resize them" if resizable else "convert them first"
        raise CfgenError(
            f"the source images are {found.size[0]}x{found.size[1]} {found.mode}, but the generator {generator} "
            f"works on {wanted}; {fix}"
        )
    fix = f"pass --resize {width}" if resizable else "convert the images first"
    raise CfgenError(
        f"--resize {resize} makes {resize}x{resize} RGB images, but the generator {generator} works on {wanted}; {fix}"
    )


def check_dataset_matches(schema: Schema, rows: MetadataTable, generator: str) -> None:
    """Every column the generator conditions on exists, and holds only values it was trained with."""
    missing = [name for name in schema.names if name not in rows.columns]
    if missing:
        raise CfgenError(
            f"{rows.source} lacks column(s) {', '.join(missing)} that the generator {generator} was trained on; "
            f"it needs: {', '.join(schema.names)}"
        )
    for variable in schema.variables:
        present_values(variable.name, rows.columns[variable.name])  # refuses missing values
        if not variable.is_discrete:
            variable.encode(rows.columns[variable.name])  # refuses values that are not numbers
            continue
        unknown = sorted({str(value) for value in rows.columns[variable.name]} - set(variable.values))
        if unknown:
            raise CfgenError(
                f"column {variable.name!r} of {rows.source} has value(s) {', '.join(map(repr, unknown[:5]))} that "
                f"the generator {generator} was not trained with; its values: {', '.join(variable.values)}"
            )


def process_state() -> PartialState:
    """This process's place among those ``accelerate launch`` started; ``PartialState()`` alone ignores
    ACCELERATE_USE_CPU, so CPU processes would each think they were alone."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def staging_dir(out: Path) -> Path:
    """The fixed place where a run to ``out`` builds its images, so a re-run finds them."""
    return out.parent / f".{out.name}.partial"


def generate_counterfactuals(
    data: str | Path,
    intervene: str,
    out: str | Path,
    generator: str | Path = EXACT,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    steps: int | None = None,
    inversion_depth: float | None = None,
    guidance: str | None = None,
    localize: str | None = None,
    inversion: str | None = None,
    guidance_start: float | None = None,
    negative: str | None = None,
    direction: str | None = None,
    before_guidance: str | None = None,
    mixed_precision: str = "auto",
    resize: int | None = None,
    data_format: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the counterfactual dataset of ``intervene`` over ``data`` (or one split) to ``out``.

    ``limit`` keeps the first N source rows (of the split), for a quick look or a time budget.
    Source images must have the generator's size and mode unless ``resize`` (its side) is given.

    Runs on every process of an ``accelerate launch``; returns when ``out`` is complete.
    """
    data, out = Path(data), Path(out)
    if batch_size < 1:
        raise CfgenError(f"--batch-size must be at least 1, not {batch_size}")
    check_output_dir(out, overwrite)
    table = open_dataset(data, data_format)
    rows = None
    if split not in (None, "all"):
        table.split(split)  # refuses an unknown split, listing the valid ones
        rows = np.flatnonzero(table.column(SPLIT_COLUMN) == split).tolist()
    if limit is not None:
        if limit < 1:
            raise CfgenError(f"--limit must be at least 1, not {limit}")
        rows = list(range(len(table)) if rows is None else rows)[:limit]
    source: CounterfactualSource
    if str(generator) == EXACT:
        given = {
            "--ddim-steps": steps, "--inversion-depth": inversion_depth, "--guidance": guidance, "--localize": localize,
            "--inversion": inversion, "--guidance-start": guidance_start, "--negative": negative,
            "--direction": direction, "--before-guidance": before_guidance,
        }  # fmt: skip
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise CfgenError(f"{extra[0]} applies to a trained generator, not to the exact renderer")
        builtin = builtin_of(table)
        if builtin is None:
            raise CfgenError(
                f"{data} is not a built-in dataset (its card names none of: {', '.join(BUILTIN)}); "
                "exact counterfactuals exist only for folders made by cfgen make-dataset"
            )
        source = builtin.exact_source(data, table)
        intervention = parse_intervention(intervene, source.schema)
        builtin.check_edit(intervention.attributes)
    else:
        folder = Path(generator)
        if not (folder / CONFIG_FILE).is_file():
            raise CfgenError(
                f"--generator {folder} is not a generator folder (it has no {CONFIG_FILE}); or give 'exact'"
            )
        model = Generator.load(folder)
        check_sources(model, table if rows is None else table.select(np.array(rows)), str(folder), resize)
        intervention = parse_intervention(intervene, model.schema)
        inference = settings_for(
            model, intervention.attributes, steps, inversion_depth, guidance, localize, inversion, guidance_start,
            negative, direction, before_guidance,
        )  # fmt: skip
        source = GeneratorSource(model, folder, inference, resolve_mixed_precision(mixed_precision))
    requests = plan_requests(table, source.schema, intervention, seed=seed, rows=rows)

    record = {
        "data": str(data.resolve()),
        "data_sha256": dataset_digest(table),
        "intervention": str(intervention),
        "split": split,
        "limit": limit,
        "seed": seed,
        "requests": len(requests),
        **source.settings(),
    }
    state = process_state()
    staging = _prepare_staging(state, staging_dir(out), record, overwrite)
    _make_shard(state, source, table, requests, staging, batch_size, progress)
    state.wait_for_everyone()
    absent = [i for i in range(len(requests)) if not (staging / image_name(i)).is_file()]
    if absent:  # checked on every process, so that all of them stop alike
        raise CfgenError(
            f"{len(absent)} of {len(requests)} counterfactuals are missing in {staging} (first: "
            f"{image_name(absent[0])}); re-run the same command to make them"
        )
    state.wait_for_everyone()  # every process has looked before the main one moves the images into place
    if state.is_main_process:
        for leftover in (staging / image_name(0)).parent.glob(".*.tmp"):
            leftover.unlink()  # temporary files of an interrupted run
        write_counterfactual_folder(staging, data, table, requests, intervention, source.name, source.schema)
        write_example_grid(staging, table)
        (staging / SETTINGS_FILE).unlink()
        run_config = {**record, "batch_size": batch_size, "processes": state.num_processes}
        write_run_record(staging, run_config, seed, record.get("mixed_precision"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    state.wait_for_everyone()
    return out


def _prepare_staging(state: PartialState, staging: Path, record: dict[str, Any], overwrite: bool) -> Path:
    """Check a partial run's settings on every process (so all refuse alike), then set up the folder."""
    stored_path = staging / SETTINGS_FILE
    current = json.loads(json.dumps(record))
    stale = False
    if stored_path.is_file():
        before = {key: value for key, value in SAVED_BEFORE.items() if key in current}  # a run stored then
        stored = before | json.loads(stored_path.read_text())
        changed = [key for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]
        if changed and not overwrite:
            key = changed[0]
            raise CfgenError(
                f"{staging} holds a partial run with another {key} ({stored.get(key)!r}, now {current.get(key)!r}); "
                "re-run that command to resume it, or pass --overwrite to start over"
            )
        stale = bool(changed)
    state.wait_for_everyone()
    if state.is_main_process:
        if stale or (staging.exists() and not stored_path.is_file()):
            shutil.rmtree(staging)
        create_folder((staging / image_name(0)).parent)
        if not stored_path.is_file():
            _write_atomically(stored_path, lambda path: write_json(path, current))
    state.wait_for_everyone()
    return staging


def _make_shard(
    state: PartialState,
    source: CounterfactualSource,
    table: MetadataTable,
    requests: Sequence[Request],
    staging: Path,
    batch_size: int,
    progress: bool,
) -> None:
    """Make this process's requests (``i % world == rank``) in fixed batches, skipping finished ones."""
    mine = list(range(state.process_index, len(requests), state.num_processes))
    with tqdm(total=len(mine), desc="counterfactuals", disable=not (progress and state.is_main_process)) as bar:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            missing = {i for i in batch if not (staging / image_name(i)).is_file()}
            if missing:
                images = source.make(table, [requests[i] for i in batch])
                for i, image in zip(batch, images, strict=True):
                    if i in missing:
                        _write_atomically(staging / image_name(i), lambda path, image=image: _save_png(image, path))
            bar.update(len(batch))


def _save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")


def _write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary name in the same folder, so ``path`` is either absent or complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def write_example_grid(folder: Path, source: MetadataTable, exact: Path | None = None, out: Path | None = None) -> Path:
    """A picture of a counterfactual folder (``folder/examples.png`` unless ``out``): up to 8 source images
    (top row) and their counterfactuals below, each captioned with the values it set, with the exact
    counterfactual of each edit above it when an ``exact`` folder of the same edits is given."""
    cf = read_imagefolder(folder)
    source_rows = cf.column("cf_source_row")
    shown = list(dict.fromkeys(source_rows))[:GRID_SOURCES]
    of_source = {row: np.flatnonzero(source_rows == row)[:GRID_COUNTERFACTUALS] for row in shown}
    truth = {}
    if exact is not None:
        reference = read_imagefolder(exact)
        keys = zip(reference.column("cf_source_row"), reference.column("cf_counterfactual"), strict=True)
        truth = {key: path for key, path in zip(keys, reference.image_paths, strict=True)}
    image_format = check_images(cf.select(np.arange(1)))

    def cell(path: str, caption: str) -> tuple[np.ndarray, str]:
        return load_images(np.array([path]), image_format)[0], caption

    depth = max(len(rows) for rows in of_source.values())
    kinds = ["exact", "edit"] if truth else ["edit"]
    cells: list[list[tuple[np.ndarray, str] | None]] = [
        [cell(source.image_paths[int(row)], f"row {row}") for row in shown]
    ]
    labels = ["source"]
    for k in range(depth):
        for kind in kinds:
            line = []
            for row in shown:
                if k >= len(of_source[row]):
                    line.append(None)
                    continue
                index = of_source[row][k]
                target = cf.column("cf_counterfactual")[index]
                path = cf.image_paths[index] if kind == "edit" else truth.get((row, target))
                line.append(None if path is None else cell(path, target.replace(",", "\n")))
            cells.append(line)
            labels.append(f"{kind} {k + 1}" if depth > 1 else kind)
    path = out or folder / GRID_FILE
    Image.fromarray(labelled_grid(cells, labels)).save(path)
    return path
