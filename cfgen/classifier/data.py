"""What a classifier trains and is judged on: splits, groups and counterfactual partners.

Images are held in memory as uint8 (small datasets train fastest that way) and converted per
batch. The training rows and the counterfactuals of training rows share one pool, so an objective
can ask for "a partner of row i" (its counterfactual, an image of another label with the same
spurious values, ...) and get a pool index, whatever folder the partner came from.

A group is a label value crossed with the values of the spurious attributes; groups are what
worst-group accuracy and Group DRO are about.
"""

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from cfgen.data.adapters import open_dataset
from cfgen.data.counterfactuals import read_counterfactuals
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.schema import Attribute, Schema, check_informative, infer_attribute
from cfgen.data.table import SPLIT_COLUMN, MetadataTable, read_imagefolder
from cfgen.datasets import builtin_of
from cfgen.errors import CfgenError

TRAIN = "train"
VALIDATION = "validation"


@dataclass(frozen=True)
class Groups:
    """Label x spurious-attribute cells: ids are ``label * spurious_cells + spurious_code``."""

    label: Attribute
    spurious: tuple[Attribute, ...]

    @property
    def spurious_cells(self) -> int:
        return int(np.prod([a.num_values for a in self.spurious])) if self.spurious else 1

    @property
    def count(self) -> int:
        return self.label.num_values * self.spurious_cells if self.spurious else 0

    def spurious_code(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        """Mixed-radix code of the spurious values (all zeros without spurious attributes)."""
        combined = np.zeros(len(codes[self.label.name]), dtype=np.int64)
        for attribute in self.spurious:
            combined = combined * attribute.num_values + codes[attribute.name]
        return combined

    def ids(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        """Group id per row, or -1 everywhere when no spurious attribute was named."""
        if not self.spurious:
            return np.full(len(codes[self.label.name]), -1, dtype=np.int64)
        return codes[self.label.name] * self.spurious_cells + self.spurious_code(codes)

    def names(self) -> list[str]:
        """``label=value,attribute=value,...`` for every group id, in id order."""
        names = []
        for group in range(self.count):
            label_code, rest = divmod(group, self.spurious_cells)
            parts = []
            for attribute in reversed(self.spurious):
                rest, code = divmod(rest, attribute.num_values)
                parts.append(f"{attribute.name}={attribute.values[code]}")
            names.append(",".join([f"{self.label.name}={self.label.values[label_code]}", *reversed(parts)]))
        return names


@dataclass
class ImageSet:
    """Images (uint8 N, H, W, C) with label codes, group ids and spurious codes, as tensors."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    spurious: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: torch.Tensor, device: torch.device) -> "Batch":
        rows = rows.cpu()
        return Batch(
            images=to_model_input(self.images[rows], device),
            labels=self.labels[rows].to(device),
            groups=self.groups[rows].to(device),
            rows=rows,
        )

    def head(self, count: int) -> "ImageSet":
        """The first ``count`` rows (views, no copy)."""
        return ImageSet(self.images[:count], self.labels[:count], self.groups[:count], self.spurious[:count])

    @classmethod
    def concat(cls, sets: list["ImageSet"]) -> "ImageSet":
        return cls(*(torch.cat([getattr(s, f.name) for s in sets]) for f in fields(cls)))


@dataclass
class Batch:
    """A training or evaluation batch; ``rows`` index the pool (training) or the split (evaluation)."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    rows: torch.Tensor


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1], the range every cfgen model reads."""
    return images.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class Relation:
    """For each training row, a list of pool rows (CSR layout): e.g. its same-label counterfactuals."""

    offsets: torch.Tensor  # (n_train + 1,)
    targets: torch.Tensor  # pool rows

    @classmethod
    def from_pairs(cls, sources: np.ndarray, targets: np.ndarray, n_train: int) -> "Relation":
        order = np.argsort(sources, kind="stable")
        counts = np.bincount(sources, minlength=n_train)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return cls(torch.from_numpy(offsets), torch.from_numpy(targets[order].astype(np.int64)))

    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def sample(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One uniformly drawn partner per row, and a mask of the rows that have any."""
        counts = self.counts()[rows]
        has = counts > 0
        draw = (torch.rand(len(rows), generator=generator) * counts.clamp(min=1)).long()
        positions = (self.offsets[rows] + draw).clamp(max=max(len(self.targets) - 1, 0))
        partners = self.targets[positions] if len(self.targets) else torch.zeros_like(rows)
        return torch.where(has, partners, torch.full_like(partners, -1)), has


@dataclass
class BlockSampler:
    """Draws, for a query (outer value o, inner value i), an item with outer == o and inner != i.

    Items are sorted by (outer, inner), so both sets are contiguous and a draw is two lookups.
    Correct-N-Contrast (label vs. ERM prediction) and gradient supervision's matched pairs
    (spurious values vs. label) both need this draw.
    """

    order: torch.Tensor
    outer_start: dict[int, int]
    outer_size: dict[int, int]
    cell_start: dict[tuple[int, int], int]
    cell_size: dict[tuple[int, int], int]

    @classmethod
    def build(cls, outer: np.ndarray, inner: np.ndarray) -> "BlockSampler":
        order = np.lexsort((inner, outer))
        outer_start: dict[int, int] = {}
        outer_size: dict[int, int] = {}
        cell_start: dict[tuple[int, int], int] = {}
        cell_size: dict[tuple[int, int], int] = {}
        for position, item in enumerate(order):
            o, i = int(outer[item]), int(inner[item])
            outer_start.setdefault(o, position)
            outer_size[o] = outer_size.get(o, 0) + 1
            cell_start.setdefault((o, i), position)
            cell_size[(o, i)] = cell_size.get((o, i), 0) + 1
        return cls(torch.from_numpy(order.astype(np.int64)), outer_start, outer_size, cell_start, cell_size)

    def sample(
        self, outer: torch.Tensor, inner: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Items (or -1) and a mask of the queries that have a candidate."""
        items = torch.full((len(outer),), -1, dtype=torch.int64)
        uniform = torch.rand(len(outer), generator=generator)
        for q, (o, i) in enumerate(zip(outer.tolist(), inner.tolist(), strict=True)):
            start, size = self.outer_start.get(o, 0), self.outer_size.get(o, 0)
            skip_start, skip = self.cell_start.get((o, i), start), self.cell_size.get((o, i), 0)
            if size - skip <= 0:
                continue
            position = start + int(uniform[q] * (size - skip))
            if position >= skip_start:
                position += skip
            items[q] = self.order[position]
        return items, items >= 0


@dataclass
class CounterfactualInfo:
    """Where the counterfactuals came from and how many pair with training rows."""

    folders: list[str] = field(default_factory=list)
    rows: int = 0
    rows_outside_train: int = 0
    same_label: int = 0
    label_changing: int = 0
    train_rows_with_counterfactuals: int = 0

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class TrainingData:
    """The pool (training rows first, then their counterfactuals) and the evaluation splits."""

    groups: Groups
    image_format: ImageFormat
    pool: ImageSet
    n_train: int
    cf_source: torch.Tensor  # training row of each counterfactual (pool row n_train + k)
    evaluation: dict[str, ImageSet]
    source: str
    counterfactuals: CounterfactualInfo
    train_source: str

    @property
    def train(self) -> ImageSet:
        return self.pool.head(self.n_train)

    @property
    def has_counterfactuals(self) -> bool:
        return len(self.pool) > self.n_train

    def relation(self, same_label: bool | None) -> Relation:
        """Each training row's counterfactuals: all (None), same-label (True) or label-changing (False)."""
        cf_rows = np.arange(self.n_train, len(self.pool))
        sources = self.cf_source.numpy()
        if same_label is not None:
            equal = (self.pool.labels[self.n_train :] == self.pool.labels[self.cf_source]).numpy()
            keep = equal if same_label else ~equal
            cf_rows, sources = cf_rows[keep], sources[keep]
        return Relation.from_pairs(sources, cf_rows, self.n_train)


def resolve_groups(
    table: MetadataTable, label: str | None, spurious: tuple[str, ...], kinds: dict[str, str] | None = None
) -> Groups:
    """The label and spurious attributes, all discrete, with vocabularies taken over every split."""
    label = table.label_column(label)
    if spurious:
        schema = table.schema(label, list(spurious), kinds)
    else:
        unknown = set(kinds or {}) - {label}
        if unknown:
            raise CfgenError(f"kind given for {min(unknown)!r}, which is neither the label nor a spurious attribute")
        schema = Schema(infer_attribute(label, table.column(label), (kinds or {}).get(label)), ())
    for variable in schema.variables:
        if not variable.is_discrete:
            role = "label" if variable is schema.label else "spurious attribute"
            raise CfgenError(
                f"the {role} {variable.name!r} is continuous; classes and groups need discrete values "
                f"(pass --kinds {variable.name}=categorical if its numbers are categories)"
            )
    return Groups(schema.label, schema.attributes)


def encode(table: MetadataTable, groups: Groups) -> ImageSet:
    """Label codes, group ids and spurious codes of a table; images are loaded later (empty here)."""
    variables = (groups.label, *groups.spurious)
    codes = {v.name: v.encode(table.column(v.name)) for v in variables}
    return ImageSet(
        torch.empty(0, dtype=torch.uint8),
        torch.from_numpy(codes[groups.label.name]),
        torch.from_numpy(groups.ids(codes)),
        torch.from_numpy(groups.spurious_code(codes)),
    )


def _check_same_format(found: ImageFormat, expected: ImageFormat, what: str, resize: int | None) -> None:
    if resize is None and found != expected:
        (w, h), (ew, eh) = found.size, expected.size
        raise CfgenError(
            f"{what} holds {w}x{h} {found.mode} images, the dataset {ew}x{eh} {expected.mode}; "
            "they must match (or pass --resize N)"
        )


def load_training_data(
    data: str | Path,
    label: str | None,
    spurious: tuple[str, ...],
    counterfactuals: tuple[str | Path, ...] = (),
    data_format: str = "auto",
    resize: int | None = None,
    train_from: str | Path | None = None,
    progress: bool = False,
    kinds: dict[str, str] | None = None,
) -> TrainingData:
    """Read a dataset (and its counterfactuals) into memory, checked, with one-line errors.

    Every check (metadata, provenance, vocabularies, image formats) runs before any image is
    loaded, so bad input fails fast. ``train_from`` replaces the training rows by the ``train``
    split (or every row) of another folder, the oracle's unconfounded data; evaluation still uses
    ``data``'s splits.
    """
    table = open_dataset(data, data_format)
    if SPLIT_COLUMN not in table.columns or TRAIN not in table.splits:
        raise CfgenError(
            f"{data} has no '{TRAIN}' split; a classifier needs a {SPLIT_COLUMN!r} column with train "
            "(and validation, test) rows"
        )
    groups = resolve_groups(table, label, spurious, kinds)
    parts = {name: table.split(name) for name in _evaluation_splits(table.splits)}
    parts[TRAIN] = table.split(TRAIN)
    if train_from is not None:
        other = open_dataset(train_from, data_format)
        parts[TRAIN] = other.split(TRAIN) if TRAIN in other.splits else other

    info = CounterfactualInfo(folders=[str(f) for f in counterfactuals])
    cf_tables, cf_sources = [], []
    for folder in counterfactuals:
        cf, source_rows = read_counterfactuals(folder, data, table, table.split_rows(TRAIN))
        info.rows += len(cf)
        info.rows_outside_train += int((source_rows < 0).sum())
        if (source_rows >= 0).any():
            cf_tables.append((folder, cf.select(source_rows >= 0)))
            cf_sources.append(source_rows[source_rows >= 0])
    if counterfactuals and not cf_tables:
        raise CfgenError(
            f"none of the {info.rows} counterfactuals in {', '.join(info.folders)} come from the train split; "
            "generate them with --split train"
        )

    variables = (groups.label, *groups.spurious)
    train_codes = {v.name: v.encode(parts[TRAIN].column(v.name)) for v in variables}
    check_informative(Schema(groups.label, groups.spurious), train_codes, f"the training rows of {train_from or data}")
    codes = {name: encode(part, groups) for name, part in parts.items()}
    cf_codes = [encode(cf, groups) for _, cf in cf_tables]
    image_format = check_images(table, resize)
    if train_from is not None:
        _check_same_format(check_images(parts[TRAIN], resize), image_format, str(train_from), resize)
    for folder, cf in cf_tables:
        _check_same_format(check_images(cf, resize), image_format, str(folder), resize)

    def load(part: MetadataTable, encoded: ImageSet) -> ImageSet:
        encoded.images = torch.from_numpy(load_images(part.image_paths, image_format, progress=progress))
        return encoded

    evaluation = {name: load(parts[name], codes[name]) for name in parts if name != TRAIN}
    train = load(parts[TRAIN], codes[TRAIN])
    cf_sets = [load(cf, encoded) for (_, cf), encoded in zip(cf_tables, cf_codes, strict=True)]
    cf_source = torch.from_numpy(np.concatenate(cf_sources)) if cf_sources else torch.zeros(0, dtype=torch.int64)
    pool = ImageSet.concat([train, *cf_sets])
    if cf_sets:
        same = pool.labels[len(train) :] == train.labels[cf_source]
        info.same_label = int(same.sum())
        info.label_changing = int((~same).sum())
        info.train_rows_with_counterfactuals = int(torch.unique(cf_source).numel())
    return TrainingData(
        groups, image_format, pool, len(train), cf_source, evaluation, str(data), info, str(train_from or data)
    )


def _evaluation_splits(splits: tuple[str, ...]) -> list[str]:
    """Every split but train: validation first, then test, then the rest by name."""
    rank = {VALIDATION: 0, "test": 1}
    return sorted((s for s in splits if s != TRAIN), key=lambda s: (rank.get(s, 2), s))


def load_oracle_data(
    data: str | Path,
    label: str | None,
    spurious: tuple[str, ...],
    oracle_data: str | Path | None,
    data_format: str = "auto",
    resize: int | None = None,
    progress: bool = False,
    kinds: dict[str, str] | None = None,
) -> TrainingData:
    """Training rows drawn without confounding (``oracle_data`` or a re-rendered built-in set)."""
    if oracle_data is not None:
        return load_training_data(data, label, spurious, (), data_format, resize, oracle_data, progress, kinds)
    builtin = builtin_of(read_imagefolder(data))
    if builtin is None:
        raise CfgenError(
            f"the oracle needs unconfounded training data: {data} is not a built-in dataset, "
            "so give a folder with --oracle-data (its train split, or every row, drawn without confounding)"
        )
    with tempfile.TemporaryDirectory(prefix="cfgen-oracle-") as scratch:
        folder = builtin.unconfounded(data, Path(scratch) / "unconfounded")
        loaded = load_training_data(data, label, spurious, (), data_format, resize, folder, progress, kinds)
    loaded.train_source = "built-in re-rendered with every tie at strength 0"
    return loaded
