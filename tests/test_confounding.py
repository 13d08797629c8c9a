"""The confounding meter on samples of known joint distributions."""

import json

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.stats import chi2_contingency, f_oneway, pearsonr, spearmanr
from scipy.stats.contingency import association, crosstab

from cfgen.confounding import compare, format_report, measure, save_report
from cfgen.data.schema import Attribute, Schema
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError

# A label with three classes tied to a four-valued attribute; population Cramér's V about 0.5.
DEPENDENT = np.array(
    [
        [0.20, 0.04, 0.02, 0.04],
        [0.03, 0.18, 0.05, 0.04],
        [0.04, 0.03, 0.08, 0.25],
    ]
)


def make_table(**columns: np.ndarray) -> MetadataTable:
    n = len(next(iter(columns.values())))
    strings = {name: np.asarray(values).astype(str) for name, values in columns.items()}
    return MetadataTable(np.array([f"img{i}.png" for i in range(n)]), strings, "memory")


def sample_joint(p: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes (row, column) of n draws from a joint probability table."""
    cells = np.random.default_rng(seed).choice(p.size, size=n, p=p.ravel() / p.sum())
    return np.divmod(cells, p.shape[1])


def named(codes: np.ndarray, prefix: str) -> np.ndarray:
    return np.char.add(prefix, codes.astype(str))


def pair(report: dict, a: str, b: str) -> dict:
    return next(p for p in report["pairs"] if {p["a"], p["b"]} == {a, b})


def run(table: MetadataTable, label: str, attributes: list[str], kinds: dict | None = None, **settings) -> dict:
    settings.setdefault("n_bootstrap", 300)
    return measure(table, table.schema(label, attributes, kinds), **settings)


@pytest.fixture(scope="module")
def mixed_report() -> dict:
    """Label, a tied categorical, a binary, and three continuous attributes: one tied to the label, one to
    that one with a negative sign, one independent."""
    rng = np.random.default_rng(7)
    label, color = sample_joint(DEPENDENT, 3000, seed=1)
    flag = (rng.random(3000) < 0.2 + 0.3 * (label == 2)).astype(int)
    size = label + rng.normal(0, 1, 3000)
    table = make_table(
        y=named(label, "c"),
        color=named(color, "k"),
        flag=np.where(flag == 1, "yes", "no"),
        size=size,
        shade=-size + rng.normal(0, 0.3, 3000),
        noise=rng.normal(0, 1, 3000),
    )
    return run(table, "y", ["color", "flag", "size", "shade", "noise"])


def test_uncorrected_v_and_chi2_test_equal_scipy():
    label, attribute = sample_joint(DEPENDENT, 2000, seed=2)
    other = np.random.default_rng(3).integers(0, 5, 2000)
    columns = {"y": named(label, "c"), "color": named(attribute, "k"), "shape": named(other, "s")}
    report = run(make_table(**columns), "y", ["color", "shape"])
    for a, b in (("y", "color"), ("y", "shape"), ("color", "shape")):
        counts = crosstab(columns[a], columns[b]).count
        entry = pair(report, a, b)
        assert entry["cramers_v"] == pytest.approx(association(counts, method="cramer"), rel=1e-12)
        expected = chi2_contingency(counts, correction=False)
        assert entry["test"] == "chi2"
        assert entry["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
        assert entry["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert entry["dof"] == expected.dof


def test_corrected_v_is_near_zero_for_independent_data():
    rng = np.random.default_rng(4)
    table = make_table(y=named(rng.integers(0, 5, 20000), "c"), color=named(rng.integers(0, 4, 20000), "k"))
    entry = pair(run(table, "y", ["color"]), "y", "color")
    assert entry["measure"] == "cramers_v_corrected"
    assert entry["value"] < 0.01
    assert entry["cramers_v"] > 0.01  # the plain V is inflated by noise; the correction removes that
    assert entry["ci_low"] == 0.0
    assert entry["p_value"] > 0.01


def test_population_v_lies_in_the_bootstrap_interval():
    population = association(np.round(DEPENDENT * 10**9).astype(np.int64), method="cramer")
    label, attribute = sample_joint(DEPENDENT, 3000, seed=5)
    table = make_table(y=named(label, "c"), color=named(attribute, "k"))
    entry = pair(run(table, "y", ["color"], n_bootstrap=1000), "y", "color")
    assert entry["ci_low"] <= population <= entry["ci_high"]
    assert entry["ci_high"] - entry["ci_low"] < 0.08
    assert entry["value"] == pytest.approx(population, abs=0.04)


def test_multinomial_bootstrap_matches_resampling_rows():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 2, 2000)
    b = np.where(rng.random(2000) < 0.7, a, 1 - a)
    table = make_table(y=np.where(a == 1, "yes", "no"), flag=np.where(b == 1, "on", "off"))
    entry = pair(run(table, "y", ["flag"], n_bootstrap=2000), "y", "flag")
    rows = rng.integers(0, 2000, size=(2000, 2000))
    low, high = np.percentile([np.corrcoef(a[index], b[index])[0, 1] for index in rows], [2.5, 97.5])
    assert entry["ci_low"] == pytest.approx(low, abs=0.006)
    assert entry["ci_high"] == pytest.approx(high, abs=0.006)


def test_corrected_v_interval_holds_the_estimate_near_independence():
    # Plain resampling of a 10 x 10 table of independent variables puts every replicate of the
    # corrected V above the estimate and above 0; the interval must still contain both.
    rng = np.random.default_rng(19)
    table = make_table(y=named(rng.integers(0, 10, 20000), "c"), color=named(rng.integers(0, 10, 20000), "k"))
    entry = pair(run(table, "y", ["color"], n_bootstrap=1000), "y", "color")
    assert entry["ci_low"] == 0.0
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"] < 0.02


@pytest.mark.parametrize("agree", [True, False])
def test_signed_phi_of_two_binaries(agree):
    rng = np.random.default_rng(8)
    a = rng.integers(0, 2, 5000)
    b = np.where(rng.random(5000) < 0.8, a, 1 - a) if agree else np.where(rng.random(5000) < 0.8, 1 - a, a)
    table = make_table(y=np.where(a == 1, "yes", "no"), flag=np.where(b == 1, "on", "off"))
    entry = pair(run(table, "y", ["flag"]), "y", "flag")
    assert entry["measure"] == "phi"
    assert entry["value"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-9)
    assert np.sign(entry["value"]) == (1 if agree else -1)
    assert abs(entry["value"]) == pytest.approx(0.6, abs=0.03)
    assert abs(entry["value"]) == pytest.approx(entry["cramers_v"], rel=1e-9)
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]


def test_pearson_and_spearman_of_continuous_pair():
    rng = np.random.default_rng(9)
    x, y = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=20000).T
    table = make_table(y=x, z=y)
    entry = pair(run(table, "y", ["z"]), "y", "z")
    assert entry["measure"] == "pearson"
    assert entry["test"] == "pearsonr"
    assert entry["value"] == pytest.approx(pearsonr(x, y).statistic, rel=1e-12)
    assert entry["spearman"] == pytest.approx(spearmanr(x, y).statistic, rel=1e-12)
    assert entry["spearman"] == pytest.approx(6 / np.pi * np.arcsin(0.3), abs=0.015)  # rho_S of a normal pair
    assert entry["ci_low"] <= 0.6 <= entry["ci_high"]


def test_subsampled_bootstrap_is_rescaled_to_the_full_sample():
    rng = np.random.default_rng(10)
    x, y = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=20000).T
    table = make_table(y=x, z=y)
    full = pair(run(table, "y", ["z"], n_bootstrap=1000), "y", "z")
    sub = pair(run(table, "y", ["z"], n_bootstrap=1000, max_bootstrap_rows=2000), "y", "z")
    full_width, sub_width = full["ci_high"] - full["ci_low"], sub["ci_high"] - sub["ci_low"]
    assert sub_width == pytest.approx(full_width, rel=0.25)  # unscaled, it would be sqrt(10) times wider
    assert sub["ci_low"] <= sub["value"] <= sub["ci_high"]


def test_correlation_ratio_of_mixed_pair():
    rng = np.random.default_rng(11)
    group = rng.integers(0, 3, 6000)
    value = group + rng.normal(0, 1, 6000)  # eta^2 = var(means) / (var(means) + 1) = 0.4
    table = make_table(y=named(group, "g"), size=value)
    entry = pair(run(table, "y", ["size"]), "y", "size")
    assert entry["measure"] == "correlation_ratio"
    assert entry["value"] == pytest.approx(np.sqrt(0.4), abs=0.02)
    assert entry["ci_low"] <= np.sqrt(0.4) <= entry["ci_high"]
    anova = f_oneway(*(value[group == g] for g in range(3)))
    eta2 = entry["value"] ** 2
    assert entry["test"] == "anova"
    assert entry["statistic"] == pytest.approx(anova.statistic, rel=1e-9)
    assert eta2 / 2 / ((1 - eta2) / (6000 - 3)) == pytest.approx(anova.statistic, rel=1e-9)


@pytest.mark.parametrize("groups", [4, 60])  # 60 groups do not fit one design block
def test_mixed_pair_bootstrap_matches_resampling_rows(groups):
    rng = np.random.default_rng(12)
    group = rng.integers(0, groups, 1500)
    value = 0.3 * group / groups * 4 + rng.normal(0, 1, 1500)
    entry = pair(run(make_table(y=named(group, "g"), size=value), "y", ["size"], n_bootstrap=2000), "y", "size")
    replicates = []
    for index in rng.integers(0, 1500, size=(2000, 1500)):
        g, v = group[index], value[index]
        counts = np.bincount(g, minlength=groups)
        means = np.bincount(g, v, minlength=groups)[counts > 0] / counts[counts > 0]
        between = np.sum(counts[counts > 0] * (means - v.mean()) ** 2)
        replicates.append(np.sqrt(between / np.sum((v - v.mean()) ** 2)))
    low, high = np.percentile(replicates, [2.5, 97.5])
    assert entry["ci_low"] == pytest.approx(low, abs=0.008)
    assert entry["ci_high"] == pytest.approx(high, abs=0.008)


def test_nmi_is_zero_for_independence_and_one_for_identical_columns():
    i = np.arange(1200)
    x = np.random.default_rng(13).normal(size=1200)
    table = make_table(y=named(i % 3, "c"), shape=named(i // 3 % 4, "s"), copy=named(i % 3, "k"), x=x, x2=3 * x)
    report = run(table, "y", ["shape", "copy", "x", "x2"])
    assert pair(report, "y", "shape")["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert pair(report, "y", "copy")["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert pair(report, "x", "x2")["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= pair(report, "y", "x")["nmi"] < 0.05


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    p = crosstab(a, b).count / len(a)
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    inside = p > 0
    mutual = np.sum(p[inside] * np.log(p[inside] / np.outer(pa, pb)[inside]))
    return mutual / np.sqrt(np.sum(pa * np.log(pa)) * np.sum(pb * np.log(pb)))


def test_nmi_of_dependent_pairs():
    label, attribute = sample_joint(DEPENDENT, 4000, seed=18)
    size = label + np.random.default_rng(18).normal(0, 1, 4000)
    table = make_table(y=named(label, "c"), color=named(attribute, "k"), size=size)
    report = run(table, "y", ["color", "size"])
    assert pair(report, "y", "color")["nmi"] == pytest.approx(nmi(label, attribute), rel=1e-9)
    deciles = np.searchsorted(np.quantile(size, np.arange(1, 10) / 10), size, side="right")  # 10 equal-count bins
    assert np.bincount(deciles).tolist() == [400] * 10
    assert pair(report, "y", "size")["nmi"] == pytest.approx(nmi(label, deciles), rel=1e-9)
    assert report["settings"]["nmi_bins"] == 10


def test_empty_cells_are_unsupported_and_small_ones_tiny():
    counts = {("l0", "a"): 50, ("l0", "b"): 40, ("l0", "c"): 10, ("l1", "a"): 3, ("l1", "b"): 60}
    counts |= {("l1", "c"): 9, ("l2", "a"): 35, ("l2", "b"): 0, ("l2", "c"): 70}
    label = np.repeat([k[0] for k in counts], list(counts.values()))
    attribute = np.repeat([k[1] for k in counts], list(counts.values()))
    table = make_table(y=label, shape=attribute)
    # "d" is in the vocabulary but never occurs, so every label lacks it
    schema = Schema(
        Attribute("y", "categorical", ("l0", "l1", "l2")), (Attribute("shape", "categorical", ("a", "b", "c", "d")),)
    )
    report = measure(table, schema, n_bootstrap=50, min_group_size=10)
    assert report["groups"]["shape"] == {
        "rows": ["l0", "l1", "l2"],
        "columns": ["a", "b", "c", "d"],
        "counts": [[50, 40, 10, 0], [3, 60, 9, 0], [35, 0, 70, 0]],
    }
    assert report["unsupported"] == [
        {"label": "l0", "attribute": "shape", "value": "d"},
        {"label": "l1", "attribute": "shape", "value": "d"},
        {"label": "l2", "attribute": "shape", "value": "b"},
        {"label": "l2", "attribute": "shape", "value": "d"},
    ]
    assert report["tiny"] == [
        {"label": "l1", "attribute": "shape", "value": "a", "count": 3},
        {"label": "l1", "attribute": "shape", "value": "c", "count": 9},
    ]
    assert [c["count"] for c in report["smallest_groups"]] == [3, 9, 10, 35, 40, 50, 60, 70]
    # the statistics use the observed 3 x 3 table
    assert pair(report, "y", "shape")["dof"] == 4


def test_continuous_attributes_have_no_group_table(mixed_report):
    assert set(mixed_report["groups"]) == {"color", "flag"}
    assert all(cell["attribute"] in ("color", "flag") for cell in mixed_report["smallest_groups"])


def test_scores_are_the_largest_absolute_associations(mixed_report):
    association = mixed_report["association"]
    names = [mixed_report["label"], *mixed_report["attributes"]]
    for attribute, entry in mixed_report["attribute_scores"].items():
        others = {other: abs(association[attribute][other]) for other in names if other != attribute}
        assert entry["score"] == max(others.values())
        assert others[entry["partner"]] == entry["score"]
    assert mixed_report["score"] == max(e["score"] for e in mixed_report["attribute_scores"].values())
    assert mixed_report["attribute_scores"]["noise"]["score"] < 0.1
    assert mixed_report["attribute_scores"]["color"]["partner"] == "y"
    assert pair(mixed_report, "size", "shade")["value"] < -0.9  # the strongest association is negative
    assert mixed_report["attribute_scores"]["shade"] == {
        "score": -pair(mixed_report, "size", "shade")["value"],
        "partner": "size",
    }
    assert 0.0 <= mixed_report["score"] <= 1.0


def test_association_matrix_is_symmetric_with_unit_diagonal(mixed_report):
    association = mixed_report["association"]
    names = [mixed_report["label"], *mixed_report["attributes"]]
    assert list(association) == names
    for a in names:
        assert association[a][a] == 1.0
        for b in names:
            assert association[a][b] == association[b][a]
    for entry in mixed_report["pairs"]:
        assert association[entry["a"]][entry["b"]] == entry["value"]
    assert len(mixed_report["pairs"]) == len(names) * (len(names) - 1) // 2
    measures = {(p["a"], p["b"]): p["measure"] for p in mixed_report["pairs"]}
    assert measures["y", "color"] == "cramers_v_corrected"
    assert measures["y", "flag"] == "cramers_v_corrected"
    assert measures["size", "noise"] == "pearson"
    assert measures["flag", "size"] == "correlation_ratio"


def test_same_seed_same_report_other_seed_other_intervals():
    rng = np.random.default_rng(14)
    label, color = sample_joint(DEPENDENT, 1000, seed=15)
    table = make_table(y=named(label, "c"), color=named(color, "k"), size=label + rng.normal(0, 1, 1000))
    first = run(table, "y", ["color", "size"], seed=3, max_bootstrap_rows=500)
    assert run(table, "y", ["color", "size"], seed=3, max_bootstrap_rows=500) == first
    other = run(table, "y", ["color", "size"], seed=4, max_bootstrap_rows=500)
    for a, b in (("y", "color"), ("y", "size")):
        assert pair(other, a, b)["value"] == pair(first, a, b)["value"]
        assert pair(other, a, b)["ci_low"] != pair(first, a, b)["ci_low"]


def test_compare_subtracts_the_reference():
    rng = np.random.default_rng(16)
    label, color = sample_joint(DEPENDENT, 2000, seed=17)
    size = label + rng.normal(0, 1, 2000)
    confounded = make_table(
        y=named(label, "c"), color=named(color, "k"), size=size, shade=size + rng.normal(0, 1, 2000)
    )
    size = rng.normal(0, 1, 2000)
    balanced = make_table(
        y=named(label, "c"),
        color=named(rng.integers(0, 4, 2000), "k"),
        size=size,
        shade=-size + rng.normal(0, 1, 2000),
        extra=rng.normal(0, 1, 2000),
    )
    before = run(confounded, "y", ["color", "size", "shade"])
    after = run(balanced, "y", ["color", "size", "shade", "extra"])
    compared = compare(after, before)
    change = compared["change"]
    assert compared["reference"] == before
    assert change["variables"] == ["y", "color", "size", "shade"]
    for a in change["variables"]:
        for b in change["variables"]:
            assert change["association"][a][b] == after["association"][a][b] - before["association"][a][b]
    assert len(change["pairs"]) == 6
    for entry in change["pairs"]:
        assert entry["value"] == pair(after, entry["a"], entry["b"])["value"]
        assert entry["reference_value"] == pair(before, entry["a"], entry["b"])["value"]
        assert entry["change"] == entry["value"] - entry["reference_value"]
    assert change["association"]["size"]["shade"] < -1.2  # signed: r went from about +0.8 to about -0.7
    assert change["score"] == after["score"] - before["score"]
    assert change["attribute_scores"]["color"] == (
        after["attribute_scores"]["color"]["score"] - before["attribute_scores"]["color"]["score"]
    )
    assert change["attribute_scores"]["color"] < -0.3  # the label-color tie is gone
    assert "extra" not in change["attribute_scores"]
    assert "only in this report: extra" in change["note"]
    assert "only in this report: extra" in format_report(compared)
    assert compare(compared, before)["change"] == change  # a compared report compares like the plain one


def test_save_report_writes_json_and_heatmap(tmp_path, mixed_report):
    save_report(mixed_report, tmp_path / "single")
    loaded = json.loads((tmp_path / "single" / "confounding.json").read_text())
    assert loaded == json.loads(json.dumps(mixed_report))
    assert loaded["pairs"][0]["a"] == "y"
    single = imread(tmp_path / "single" / "confounding.png")
    assert single.ndim == 3 and single.shape[0] > 100

    save_report(compare(mixed_report, mixed_report), tmp_path / "compared")
    triple = imread(tmp_path / "compared" / "confounding.png")
    assert triple.shape[1] > 2.5 * single.shape[1]  # reference, this report and change side by side


def test_format_report_lists_pairs_by_strength(mixed_report):
    text = format_report(mixed_report)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("a "))
    for column in ("measure", "value", "95% CI", "p-value", "NMI"):
        assert column in lines[header]
    values = [abs(float(line.split()[3])) for line in lines[header + 1 : header + 1 + len(mixed_report["pairs"])]]
    assert values == sorted(values, reverse=True)
    assert f"confounding score: {mixed_report['score']:.3f}" in text
    assert "unsupported groups (empty label x attribute cells): 0" in text
    assert "change" not in lines[header]
    assert "change" in format_report(compare(mixed_report, mixed_report)).splitlines()[header]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("n_bootstrap", 0, "n_bootstrap must be an integer >= 1"),
        ("n_bootstrap", 2.5, "n_bootstrap must be an integer >= 1"),
        ("confidence", 0.0, "strictly between 0 and 1"),
        ("confidence", 1.0, "strictly between 0 and 1"),
        ("confidence", 95, "strictly between 0 and 1"),
        ("seed", -1, "seed must be an integer >= 0"),
        ("min_group_size", 0, "min_group_size must be an integer >= 1"),
        ("max_bootstrap_rows", 1, "max_bootstrap_rows must be an integer >= 2"),
    ],
)
def test_bad_settings_raise_one_line_errors(setting, value, message):
    table = make_table(y=["a", "b"] * 10, flag=["x", "y", "y", "x"] * 5)
    with pytest.raises(CfgenError, match=message) as error:
        measure(table, table.schema("y", ["flag"]), **{setting: value})
    assert "\n" not in str(error.value)


def test_a_variable_with_one_observed_value_is_refused():
    table = make_table(y=["a", "b"] * 10, flag=["x"] * 20)
    schema = Schema(Attribute("y", "binary", ("a", "b")), (Attribute("flag", "binary", ("x", "y")),))
    with pytest.raises(CfgenError, match="'flag' takes the single value 'x'"):
        measure(table, schema)


def test_the_bootstrap_shows_its_progress_and_does_not_change_the_figures(capsys) -> None:
    rng = np.random.default_rng(3)
    label, color = sample_joint(DEPENDENT, 500, seed=2)
    table = make_table(y=named(label, "c"), color=named(color, "k"), size=label + rng.normal(0, 1, 500))
    quiet = run(table, "y", ["color", "size"])
    capsys.readouterr()
    shown = run(table, "y", ["color", "size"], progress=True)
    err = capsys.readouterr().err
    assert "bootstrap, pair by pair" in err and "bootstrap, continuous pairs" in err
    assert shown == quiet
