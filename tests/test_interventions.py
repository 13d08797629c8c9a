"""The intervention language: parsing, validation and planning."""

import numpy as np
import pytest

from cfgen.data.schema import Attribute, Schema
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError
from cfgen.interventions import parse_intervention, plan_requests

SCHEMA = Schema(
    Attribute("digit", "categorical", tuple("0123")),
    (
        Attribute("color", "categorical", ("red", "green", "blue")),
        Attribute("thick", "binary", ("no", "yes")),
        Attribute("slant", "continuous"),
    ),
)
TABLE = MetadataTable(
    np.array(["a", "b", "c"], dtype=object),
    {
        "file_name": np.array(["a", "b", "c"]),
        "digit": np.array(["0", "1", "2"]),
        "color": np.array(["red", "green", "blue"]),
        "thick": np.array(["no", "yes", "no"]),
        "slant": np.array(["0.1", "0.2", "0.3"]),
    },
    "table",
)


def test_value_all_others_random_and_joint() -> None:
    rng = np.random.default_rng(0)
    assert parse_intervention("color=green", SCHEMA).targets(SCHEMA, {"color": "red"}, rng) == [{"color": "green"}]
    every = parse_intervention("color=*", SCHEMA).targets(SCHEMA, {"color": "red"}, rng)
    assert every == [{"color": "green"}, {"color": "blue"}]
    joint = parse_intervention("color=*, thick=*", SCHEMA).targets(SCHEMA, {"color": "red", "thick": "no"}, rng)
    assert joint == [{"color": "green", "thick": "yes"}, {"color": "blue", "thick": "yes"}]
    for _ in range(20):
        (drawn,) = parse_intervention("color=random", SCHEMA).targets(SCHEMA, {"color": "blue"}, rng)
        assert drawn["color"] in ("red", "green")
    assert str(parse_intervention("slant=0.5,color=red", SCHEMA)) == "slant=0.5,color=red"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty intervention"),
        ("colour=red", "unknown attribute 'colour'; valid names: digit, color, thick, slant"),
        ("color=purple", "'purple' is not a value of 'color'; valid values: red, green, blue"),
        ("color", "write attribute=value"),
        ("color=red,color=blue", "appears twice"),
        ("slant=*", "continuous: give a number"),
        ("slant=steep", "not a number"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(CfgenError, match=message.replace("(", r"\(")):
        parse_intervention(spec, SCHEMA)


def test_plan_is_deterministic_and_keeps_row_numbers() -> None:
    intervention = parse_intervention("color=random", SCHEMA)
    first = plan_requests(TABLE, SCHEMA, intervention, seed=3)
    assert first == plan_requests(TABLE, SCHEMA, intervention, seed=3)
    assert [r.row for r in first] == [0, 1, 2]
    assert all(r.target["color"] != TABLE.columns["color"][r.row] for r in first)
    subset = plan_requests(TABLE, SCHEMA, intervention, seed=3, rows=[2])
    assert subset == [first[2]]
    assert len(plan_requests(TABLE, SCHEMA, parse_intervention("color=*,thick=*", SCHEMA))) == 6
