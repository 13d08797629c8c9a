"""Which columns are the label and the attributes, and what kind of variable each one is.

Every stage works on integer codes (binary and categorical) or floats (continuous), so the schema
is the single place that turns a column of strings into numbers and back. Discrete values keep a
fixed vocabulary order (numeric order when every value is a number, else alphabetical); for a
binary variable the second value is the "positive" one, which gives signed phi its sign.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from cfgen.errors import CfgenError

Kind = Literal["binary", "categorical", "continuous"]
KINDS: tuple[str, ...] = ("binary", "categorical", "continuous")
MISSING = frozenset({"", "nan", "na", "none", "null"})
MAX_CATEGORIES_FOR_NUMBERS = 20  # integer columns with more distinct values are read as continuous


@dataclass(frozen=True)
class Attribute:
    """A label or attribute column: its name, kind and, for discrete kinds, its vocabulary."""

    name: str
    kind: Kind
    values: tuple[str, ...] = field(default=())

    @property
    def is_discrete(self) -> bool:
        return self.kind != "continuous"

    @property
    def num_values(self) -> int:
        return len(self.values)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Integer codes (discrete) or floats (continuous) for an array of strings."""
        raw = np.asarray(raw, dtype=str)
        if not self.is_discrete:
            return _parse_floats(self.name, raw)
        uniques, inverse = np.unique(raw, return_inverse=True)
        position = {value: i for i, value in enumerate(self.values)}
        unknown = [str(u) for u in uniques if u not in position]
        if unknown:
            present_values(self.name, raw)  # a missing value is named as such
            raise CfgenError(
                f"column {self.name!r} has value {unknown[0]!r} outside its vocabulary; "
                f"valid values: {', '.join(self.values)}"
            )
        return np.array([position[u] for u in uniques], dtype=np.int64)[inverse]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Strings for integer codes (discrete) or floats (continuous)."""
        if not self.is_discrete:
            return np.asarray(codes, dtype=float).astype(str)
        return np.asarray(self.values, dtype=object)[np.asarray(codes, dtype=np.int64)]

    def code_of(self, value: str) -> int:
        """The code of one discrete value, with an error listing the vocabulary."""
        try:
            return self.values.index(value)
        except ValueError:
            raise CfgenError(
                f"{value!r} is not a value of {self.name!r}; valid values: {', '.join(self.values)}"
            ) from None


@dataclass(frozen=True)
class Schema:
    """The label and the attributes that a stage works with."""

    label: Attribute
    attributes: tuple[Attribute, ...]

    @property
    def variables(self) -> tuple[Attribute, ...]:
        """The label first, then the attributes."""
        return (self.label, *self.attributes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def __getitem__(self, name: str) -> Attribute:
        for variable in self.variables:
            if variable.name == name:
                return variable
        raise CfgenError(f"unknown attribute {name!r}; valid names: {', '.join(self.names)}")

    def encode(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {v.name: v.encode(columns[v.name]) for v in self.variables}

    def to_dict(self) -> dict:
        return {"label": asdict(self.label), "attributes": [asdict(a) for a in self.attributes]}

    @classmethod
    def from_dict(cls, payload: dict) -> "Schema":
        def attribute(entry: dict) -> Attribute:
            return Attribute(entry["name"], entry["kind"], tuple(entry["values"]))

        return cls(attribute(payload["label"]), tuple(attribute(a) for a in payload["attributes"]))


def infer_attribute(name: str, raw: np.ndarray, kind: str | None = None) -> Attribute:
    """Infer (or check the requested) kind and vocabulary of one column of strings."""
    uniques = present_values(name, raw)
    if uniques.size == 1:
        raise CfgenError(
            f"column {name!r} has the single value {str(uniques[0])!r}, so it carries no information; "
            "leave it out of the attributes"
        )
    numbers = _try_floats(uniques)
    if kind is None:
        kind = _default_kind(uniques, numbers)
    if kind not in KINDS:
        raise CfgenError(f"unknown kind {kind!r} for {name!r}; valid kinds: {', '.join(KINDS)}")
    if kind == "binary" and uniques.size != 2:
        raise CfgenError(f"column {name!r} has {uniques.size} values, so it cannot be binary; use categorical")
    if kind == "continuous":
        if numbers is None:
            raise CfgenError(f"column {name!r} is not numeric, so it cannot be continuous; use categorical")
        _parse_floats(name, raw)
        return Attribute(name, "continuous")
    if numbers is not None:
        uniques = uniques[np.argsort(numbers, kind="stable")]
    return Attribute(name, kind, tuple(str(u) for u in uniques))


def declared_attribute(name: str, raw: np.ndarray, values: Sequence[str]) -> Attribute:
    """A discrete attribute whose vocabulary a dataset card declares (so values absent here still count)."""
    values = tuple(str(v) for v in values)
    undeclared = [str(v) for v in present_values(name, raw) if v not in values]
    if undeclared:
        raise CfgenError(
            f"column {name!r} has value {undeclared[0]!r} that the dataset card does not declare; "
            f"declared values: {', '.join(values)}"
        )
    return Attribute(name, "binary" if len(values) == 2 else "categorical", values)


def check_informative(schema: Schema, codes: dict[str, np.ndarray], source: str) -> None:
    """Refuse a variable that takes one value in these rows: nothing can be measured or learned about it.

    Every stage applies it to the rows it works on (the meter to the measured rows, training to the
    training rows), so a dataset card that declares more values does not hide a degenerate split.
    """
    for variable in schema.variables:
        column = codes[variable.name]
        if len(column) and column.min() == column.max():
            value = variable.values[int(column[0])] if variable.is_discrete else float(column[0])
            raise CfgenError(
                f"column {variable.name!r} takes the single value {value!r} in {source}, so it carries no "
                "information; leave it out of the attributes"
            )


def present_values(name: str, raw: np.ndarray) -> np.ndarray:
    """The distinct values of a column, refusing an empty column and missing values."""
    raw = np.asarray(raw, dtype=str)
    if raw.size == 0:
        raise CfgenError(f"column {name!r} is empty: the dataset has no rows")
    uniques = np.unique(raw)
    missing = [u for u in uniques if u.strip().lower() in MISSING]
    if missing:
        rows = np.flatnonzero(np.isin(raw, missing))
        raise CfgenError(
            f"column {name!r} has {rows.size} missing values (empty or NaN), first at data row "
            f"{rows[0] + 1}; fill them in or drop those rows"
        )
    return uniques


def _default_kind(uniques: np.ndarray, numbers: np.ndarray | None) -> Kind:
    if uniques.size == 2:
        return "binary"
    if numbers is None:
        return "categorical"
    if np.all(numbers == np.round(numbers)) and uniques.size <= MAX_CATEGORIES_FOR_NUMBERS:
        return "categorical"
    return "continuous"


def _try_floats(values: np.ndarray) -> np.ndarray | None:
    try:
        return values.astype(float)
    except ValueError:
        return None


def _parse_floats(name: str, raw: np.ndarray) -> np.ndarray:
    numbers = _try_floats(raw)
    if numbers is None:
        raise CfgenError(f"column {name!r} is continuous but holds values that are not numbers")
    bad = np.flatnonzero(~np.isfinite(numbers))
    if bad.size:
        raise CfgenError(
            f"column {name!r} is continuous but data row {bad[0] + 1} holds {str(raw[bad[0]])!r}, "
            "which is not a finite number"
        )
    return numbers
