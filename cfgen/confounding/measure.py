"""``measure``: association between every pair of label and attributes, groups, and scores.

See docs/confounding.md for every statistic and every key of the report.
"""

import zlib

import numpy as np
from scipy.stats import chi2_contingency, f_oneway, pearsonr, spearmanr
from scipy.stats.contingency import association
from tqdm.auto import tqdm

from cfgen.confounding.bootstrap import row_replicates, table_replicates
from cfgen.confounding.statistics import (
    NMI_BINS,
    bergsma_v,
    chi2_batch,
    contingency,
    correlation_ratio,
    normalized_mutual_information,
    observed,
    percentile_interval,
    phi_batch,
    quantile_codes,
)
from cfgen.data.schema import Schema, check_informative
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError

SMALLEST_GROUPS = 10  # how many of the smallest non-empty groups the report lists
RANGES = {"pearson": (-1.0, 1.0), "correlation_ratio": (0.0, 1.0)}  # intervals of rescaled row bootstraps are clipped


def measure(
    table: MetadataTable,
    schema: Schema,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_group_size: int = 10,
    max_bootstrap_rows: int = 50_000,
    progress: bool = False,
) -> dict:
    """How strongly the label and attributes move together, as a JSON-able report.

    Every pair gets a headline association with a bootstrap interval and a significance test, and
    NMI; label x attribute groups that are empty (unsupported for counterfactual training) or
    smaller than ``min_group_size`` are listed; the scores summarise it in [0, 1].
    """
    _check_settings(n_bootstrap, confidence, seed, min_group_size, max_bootstrap_rows)
    variables = schema.variables
    for variable in variables:
        table.column(variable.name)
    if len(table) < 2:
        raise CfgenError(f"{table.source} has {len(table)} rows; measuring association needs at least 2")
    codes = schema.encode(table.columns)
    check_informative(schema, codes, table.source)
    for variable in variables:
        if not variable.is_discrete:  # every statistic is scale-free: dividing keeps values near 1.5e308 finite
            codes[variable.name] = codes[variable.name] / np.abs(codes[variable.name]).max()

    by_name = {v.name: v for v in variables}
    binned = {v.name: codes[v.name] if v.is_discrete else quantile_codes(codes[v.name]) for v in variables}
    bins = {v.name: v.num_values if v.is_discrete else NMI_BINS for v in variables}
    pairs = [(a.name, b.name) for i, a in enumerate(variables) for b in variables[i + 1 :]]
    tables, entries = {}, {}
    for a, b in tqdm(pairs, desc="bootstrap, pair by pair", disable=not progress, leave=False):
        va, vb = by_name[a], by_name[b]
        if va.is_discrete and vb.is_discrete:
            tables[a, b] = contingency(codes[a], codes[b], va.num_values, vb.num_values)
            binary = va.kind == vb.kind == "binary"
            rng = np.random.default_rng([seed, 1, zlib.crc32(a.encode()), zlib.crc32(b.encode())])
            entry = _discrete_pair(tables[a, b], binary, n_bootstrap, confidence, rng)
        elif va.is_discrete or vb.is_discrete:
            group, value = (va, vb) if va.is_discrete else (vb, va)
            entry = _mixed_pair(codes[group.name], group.num_values, codes[value.name])
        else:
            entry = _continuous_pair(codes[a], codes[b])
        nmi_table = tables.get((a, b))
        if nmi_table is None:
            nmi_table = contingency(binned[a], binned[b], bins[a], bins[b])
        entries[a, b] = {"a": a, "b": b, **entry, "nmi": normalized_mutual_information(nmi_table)}
        if not np.isfinite(entries[a, b]["value"]):
            raise CfgenError(
                f"the association of {a!r} and {b!r} is undefined on these {len(table)} rows: too few rows for "
                "their values, or values too extreme to compute with"
            )

    row_pairs = [pair for pair in pairs if pair not in tables]
    if row_pairs:
        involved = {name for pair in row_pairs for name in pair}
        scale, replicates = row_replicates(
            {name: codes[name] for name in involved},
            {name: by_name[name].num_values for name in involved if by_name[name].is_discrete},
            row_pairs,
            n_bootstrap,
            max_bootstrap_rows,
            np.random.default_rng([seed, 0]),
            progress,
        )
        for pair in row_pairs:
            entry = entries[pair]
            subsample_value, values = replicates[pair]
            interval = percentile_interval(values, confidence)
            if interval is not None:
                low, high = RANGES[entry["measure"]]
                bounds = [entry["value"] + scale * (q - subsample_value) for q in interval]
                entry["ci_low"], entry["ci_high"] = (float(np.clip(q, low, high)) for q in bounds)

    names = [v.name for v in variables]
    headline = {frozenset(pair): entry["value"] for pair, entry in entries.items()}
    matrix = {a: {b: 1.0 if a == b else headline[frozenset((a, b))] for b in names} for a in names}
    report = {
        "label": schema.label.name,
        "attributes": [a.name for a in schema.attributes],
        "kinds": {v.name: v.kind for v in variables},
        "values": {v.name: list(v.values) for v in variables if v.is_discrete},
        "source": table.source,
        "n_rows": len(table),
        "settings": {
            "n_bootstrap": int(n_bootstrap),
            "confidence": float(confidence),
            "seed": int(seed),
            "min_group_size": int(min_group_size),
            "max_bootstrap_rows": int(max_bootstrap_rows),
            "bootstrap_rows": min(len(table), max_bootstrap_rows),
            "nmi_bins": NMI_BINS,
        },
        "association": matrix,
        "pairs": list(entries.values()),
    }
    report.update(_groups(schema, tables, min_group_size))
    report.update(_scores(schema, report["pairs"]))
    return report


def _check_settings(
    n_bootstrap: int, confidence: float, seed: int, min_group_size: int, max_bootstrap_rows: int
) -> None:
    for name, value, lowest in (
        ("n_bootstrap", n_bootstrap, 1),
        ("seed", seed, 0),
        ("min_group_size", min_group_size, 1),
        ("max_bootstrap_rows", max_bootstrap_rows, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lowest:
            raise CfgenError(f"{name} must be an integer >= {lowest}, got {value!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise CfgenError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")


def _number(value: float) -> float | None:
    """A JSON-safe float: NaN (undefined) becomes null."""
    return float(value) if np.isfinite(value) else None


def _entry(measure: str, statistics: dict, test: str, statistic: float, p_value: float) -> dict:
    return {
        "measure": measure,
        "value": float(statistics[measure]),
        "ci_low": None,
        "ci_high": None,
        "p_value": _number(p_value),
        "test": test,
        "statistic": _number(statistic),
        **{name: _number(value) for name, value in statistics.items()},
    }


def _discrete_pair(
    table: np.ndarray, binary: bool, n_bootstrap: int, confidence: float, rng: np.random.Generator
) -> dict:
    """Cramér's V (plain and corrected), phi for two binaries; chi-square test without Yates correction."""
    counts, n = observed(table), int(table.sum())
    chi2, p_value, dof, _ = chi2_contingency(counts, correction=False)
    statistics = {
        "cramers_v": association(counts, method="cramer"),
        "cramers_v_corrected": bergsma_v(chi2, n, *counts.shape),
    }
    frequencies = table / n
    if binary:
        statistics["phi"] = phi_batch(table[None])[0]
        measure, replicate = "phi", phi_batch
    else:
        measure, replicate = "cramers_v_corrected", lambda tables: bergsma_v(*chi2_batch(tables))
    if not np.isfinite(statistics[measure]):  # undefined on these rows: the caller refuses the pair
        return {**_entry(measure, statistics, "chi2", chi2, p_value), "dof": int(dof)}
    if not binary:
        # Resampling the observed table reproduces its plain V, which noise inflates above the
        # corrected estimate: near independence every replicate would lie above the estimate and
        # above 0. Scaling the departure from independence by corrected / plain V (margins kept)
        # gives a population whose V is the estimate; docs/confounding.md has the coverage figures.
        shrink = statistics["cramers_v_corrected"] / statistics["cramers_v"] if statistics["cramers_v"] > 0 else 0.0
        independent = np.outer(frequencies.sum(axis=1), frequencies.sum(axis=0))
        frequencies = np.maximum(0.0, independent + shrink * (frequencies - independent))
        frequencies /= frequencies.sum()
    entry = _entry(measure, statistics, "chi2", chi2, p_value)
    interval = percentile_interval(table_replicates(frequencies, n, replicate, n_bootstrap, rng), confidence)
    if interval is not None:
        entry["ci_low"], entry["ci_high"] = interval
    return {**entry, "dof": int(dof)}


def _mixed_pair(groups: np.ndarray, size: int, values: np.ndarray) -> dict:
    """Correlation ratio of the continuous variable on the discrete one; one-way ANOVA."""
    counts = np.bincount(groups, minlength=size)
    centred = values - values.mean()
    eta = correlation_ratio(
        counts, np.bincount(groups, centred, minlength=size), np.bincount(groups, centred**2, minlength=size)
    )
    order = np.argsort(groups.astype(np.min_scalar_type(size)), kind="stable")  # small ints: radix sort
    samples = [s for s in np.split(values[order], np.cumsum(counts)[:-1]) if s.size]
    anova = f_oneway(*samples)
    return _entry("correlation_ratio", {"correlation_ratio": eta}, "anova", anova.statistic, anova.pvalue)


def _continuous_pair(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson r (headline, with its test) and Spearman rho."""
    pearson = pearsonr(x, y)
    statistics = {"pearson": pearson.statistic, "spearman": spearmanr(x, y).statistic}
    return _entry("pearson", statistics, "pearsonr", pearson.statistic, pearson.pvalue)


def _groups(schema: Schema, tables: dict[tuple[str, str], np.ndarray], min_group_size: int) -> dict:
    """Label x attribute counts for discrete attributes, and the empty, tiny and smallest cells."""
    label = schema.label
    groups, cells = {}, []
    for attribute in schema.attributes:
        if not (label.is_discrete and attribute.is_discrete):
            continue
        counts = tables[label.name, attribute.name]
        groups[attribute.name] = {
            "rows": list(label.values),
            "columns": list(attribute.values),
            "counts": counts.tolist(),
        }
        for i, j in np.ndindex(counts.shape):
            cell = {"label": label.values[i], "attribute": attribute.name, "value": attribute.values[j]}
            cells.append({**cell, "count": int(counts[i, j])})
    filled = sorted((c for c in cells if c["count"] > 0), key=lambda c: c["count"])  # stable: ties keep order
    return {
        "groups": groups,
        "smallest_groups": filled[:SMALLEST_GROUPS],
        "unsupported": [{k: c[k] for k in ("label", "attribute", "value")} for c in cells if c["count"] == 0],
        "tiny": [c for c in filled if c["count"] < min_group_size],
    }


def _scores(schema: Schema, pairs: list[dict]) -> dict:
    """Attribute score: its largest |headline| with any partner; dataset score: the largest of those."""
    scores = {}
    for attribute in schema.attributes:
        name = attribute.name
        best = max((p for p in pairs if name in (p["a"], p["b"])), key=lambda p: abs(p["value"]))
        scores[name] = {"score": abs(best["value"]), "partner": best["b"] if best["a"] == name else best["a"]}
    return {"score": max(s["score"] for s in scores.values()), "attribute_scores": scores}
