"""The intervention language: which attributes to change and to what.

    fg_color=green              one value
    fg_color=*                  every other value (one counterfactual per value)
    fg_color=random             one other value drawn at random (deterministic by seed and row)
    fg_color=green,thickness=*  joint: the product of the parts

An intervention is planned once over a dataset into a list of requests, the same on every process,
so a request's position in the plan is its identity: sharding and resuming rely on that.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError

ALL_OTHERS = "*"
RANDOM = "random"


@dataclass(frozen=True)
class Intervention:
    """A parsed intervention: (attribute, value | "*" | "random") pairs."""

    parts: tuple[tuple[str, str], ...]

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parts)

    def __str__(self) -> str:
        return format_assignment(dict(self.parts))

    def targets(self, schema: Schema, factual: dict[str, str], rng: np.random.Generator) -> list[dict[str, str]]:
        """The counterfactual values of the intervened attributes for one row, one dict per counterfactual."""
        choices = []
        for name, value in self.parts:
            others = [v for v in schema[name].values if v != factual[name]]
            if value == ALL_OTHERS:
                choices.append(others)
            elif value == RANDOM:
                choices.append([others[rng.integers(len(others))]])
            else:
                choices.append([value])
        return [dict(zip(self.attributes, combo, strict=True)) for combo in itertools.product(*choices)]


@dataclass(frozen=True)
class Request:
    """One counterfactual to produce: the source row and the new values of the intervened attributes."""

    row: int
    target: dict[str, str]


def parse_intervention(spec: str, schema: Schema) -> Intervention:
    """Parse and validate ``spec`` against the schema, with errors that list the valid choices."""
    if not spec or not spec.strip():
        raise CfgenError(f"empty intervention; write attribute=value, e.g. {schema.attributes[0].name}=*")
    parts: list[tuple[str, str]] = []
    for piece in spec.split(","):
        name, sep, value = (s.strip() for s in piece.partition("="))
        if not sep or not name or not value:
            raise CfgenError(f"cannot read {piece.strip()!r} in intervention {spec!r}; write attribute=value")
        attribute = schema[name]
        if name in dict(parts):
            raise CfgenError(f"attribute {name!r} appears twice in intervention {spec!r}")
        if not attribute.is_discrete:
            if value in (ALL_OTHERS, RANDOM):
                raise CfgenError(f"{name!r} is continuous: give a number, not {value!r}")
            try:
                value = str(float(value))
            except ValueError:
                raise CfgenError(f"{name!r} is continuous: {value!r} is not a number") from None
        elif value not in (ALL_OTHERS, RANDOM):
            attribute.code_of(value)
        parts.append((name, value))
    return Intervention(tuple(parts))


def plan_requests(
    table: MetadataTable,
    schema: Schema,
    intervention: Intervention,
    seed: int = 0,
    rows: Sequence[int] | None = None,
) -> list[Request]:
    """Every counterfactual asked for, in a fixed order; random choices depend only on (seed, row).

    ``rows`` restricts the sources (for example to one split) while keeping row numbers those of
    the whole table, so provenance points at the right line of the source metadata.
    """
    if seed < 0:
        raise CfgenError(f"seed must be a whole number >= 0, not {seed}")
    columns = {name: table.column(name) for name in intervention.attributes}
    requests = []
    for row in range(len(table)) if rows is None else rows:
        rng = np.random.default_rng([seed, row])
        factual = {name: str(column[row]) for name, column in columns.items()}
        requests.extend(Request(row, target) for target in intervention.targets(schema, factual, rng))
    return requests


def format_assignment(values: dict[str, str]) -> str:
    return ",".join(f"{name}={value}" for name, value in values.items())
