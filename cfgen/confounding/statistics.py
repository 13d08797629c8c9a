"""Association statistics, written to work on a whole batch of bootstrap resamples at once.

Every function takes arrays with a leading batch axis (one entry per resample), so the point
estimate and a thousand bootstrap replicates go through the same arithmetic. A statistic that is
undefined in a resample (a variable became constant) comes out as NaN and is left out of the
percentiles.
"""

import numpy as np
from scipy.stats import entropy

NMI_BINS = 10  # continuous variables enter NMI as this many quantile bins


def contingency(a: np.ndarray, b: np.ndarray, size_a: int, size_b: int) -> np.ndarray:
    """Counts of every (a, b) code pair, including values that never occur."""
    return np.bincount(a * size_b + b, minlength=size_a * size_b).reshape(size_a, size_b)


def observed(table: np.ndarray) -> np.ndarray:
    """The table without empty rows and columns (scipy's chi-square needs positive margins)."""
    return table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]


def chi2_batch(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pearson chi-square (no Yates correction), n, and the non-empty row and column counts."""
    tables = tables.astype(float)
    n = tables.sum(axis=(1, 2))
    rows, cols = tables.sum(axis=2), tables.sum(axis=1)
    expected = rows[:, :, None] * cols[:, None, :] / n[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (tables - expected) ** 2 / expected, 0.0)
    return terms.sum(axis=(1, 2)), n, (rows > 0).sum(axis=1), (cols > 0).sum(axis=1)


def bergsma_v(chi2: np.ndarray, n: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Bias-corrected Cramér's V (Bergsma 2013): plain V is inflated in small or sparse tables."""
    phi2 = np.maximum(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
    r_tilde = r - (r - 1) ** 2 / (n - 1)
    c_tilde = c - (c - 1) ** 2 / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(1.0, np.sqrt(phi2 / np.minimum(r_tilde - 1, c_tilde - 1)))


def phi_batch(tables: np.ndarray) -> np.ndarray:
    """Signed phi of 2x2 tables: the Pearson r of the 0/1 codes (code 1 = second vocabulary value)."""
    t = tables.astype(float)
    cross = t[:, 0, 0] * t[:, 1, 1] - t[:, 0, 1] * t[:, 1, 0]
    margins = t[:, 0].sum(axis=1) * t[:, 1].sum(axis=1) * t[:, :, 0].sum(axis=1) * t[:, :, 1].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cross / np.sqrt(margins)


def correlation_ratio(counts: np.ndarray, sums: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """Eta = sqrt(between-group / total sum of squares), from per-group count, sum and sum of squares.

    The last axis is the group; pass values centred on their mean to keep the subtraction exact.
    """
    total = counts.sum(axis=-1)
    grand = sums.sum(axis=-1) ** 2 / total
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(counts > 0, sums**2 / counts, 0.0).sum(axis=-1) - grand
        return np.sqrt(np.clip(between / (squares.sum(axis=-1) - grand), 0.0, 1.0))


def weighted_pearson(
    w: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray
) -> np.ndarray:
    """Pearson r from weighted sums (weights = how often each row was drawn)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy - sx * sy / w
        return np.clip(cov / np.sqrt((sxx - sx**2 / w) * (syy - sy**2 / w)), -1.0, 1.0)


def quantile_codes(x: np.ndarray, bins: int = NMI_BINS) -> np.ndarray:
    """Codes 0..bins-1 of equal-frequency bins; ties can leave some bins empty."""
    edges = np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.searchsorted(edges, x, side="right")


def normalized_mutual_information(table: np.ndarray) -> float:
    """I(a; b) / sqrt(H(a) H(b)) of a contingency table: 0 = independent, 1 = one determines the other."""
    h_a, h_b = entropy(table.sum(axis=1)), entropy(table.sum(axis=0))
    mutual = h_a + h_b - entropy(table.ravel())
    return float(np.clip(mutual / np.sqrt(h_a * h_b), 0.0, 1.0))


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile interval of bootstrap replicates, ignoring undefined ones; None if all are."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
