"""Comparing, printing and saving confounding reports.

A compared report is the report itself plus ``reference`` (the other report) and ``change``
(this report minus the reference, over the variables both share), so one file holds the before,
the after and the difference.
"""

from pathlib import Path

import numpy as np

from cfgen.io import write_json

JSON_FILE = "confounding.json"
PNG_FILE = "confounding.png"
LISTED = 5  # unsupported and tiny groups printed on the console; the JSON has them all


def _variables(report: dict) -> list[str]:
    return [report["label"], *report["attributes"]]


def _own(report: dict) -> dict:
    """The report without an earlier comparison, so comparisons never nest."""
    return {key: value for key, value in report.items() if key not in ("reference", "change")}


def compare(report: dict, reference: dict) -> dict:
    """``report`` with ``reference`` and ``change`` (report minus reference) added.

    Only variables present in both are compared, so a re-measure with an attribute added or
    dropped still compares; ``change["note"]`` says which were left out.
    """
    report, reference = _own(report), _own(reference)
    theirs = set(_variables(reference))
    shared = [name for name in _variables(report) if name in theirs]
    reference_pairs = {frozenset((p["a"], p["b"])): p for p in reference["pairs"]}
    pairs = []
    for pair in report["pairs"]:
        before = reference_pairs.get(frozenset((pair["a"], pair["b"])))
        if before is not None:
            pairs.append(
                {
                    "a": pair["a"],
                    "b": pair["b"],
                    "measure": pair["measure"],
                    "reference_measure": before["measure"],
                    "value": pair["value"],
                    "reference_value": before["value"],
                    "change": pair["value"] - before["value"],
                }
            )
    only_here = [name for name in _variables(report) if name not in theirs]
    only_there = [name for name in _variables(reference) if name not in shared]
    note = f"all {len(pairs)} pairs compared"
    if only_here or only_there:
        note = (
            f"only the {len(pairs)} pairs shared by both reports are compared; "
            f"only in this report: {', '.join(only_here) or 'none'}; "
            f"only in the reference: {', '.join(only_there) or 'none'}"
        )
    scores, reference_scores = report["attribute_scores"], reference["attribute_scores"]
    change = {
        "variables": shared,
        "note": note,
        "association": {
            a: {b: report["association"][a][b] - reference["association"][a][b] for b in shared} for a in shared
        },
        "pairs": pairs,
        "score": report["score"] - reference["score"],
        "attribute_scores": {
            name: scores[name]["score"] - reference_scores[name]["score"] for name in scores if name in reference_scores
        },
    }
    return {**report, "reference": reference, "change": change}


def save_report(report: dict, out_dir: Path) -> None:
    """Write ``confounding.json`` (indent 2) and the ``confounding.png`` heatmap into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / JSON_FILE, report)
    _heatmap(report, out_dir / PNG_FILE)


def _heatmap(report: dict, path: Path) -> None:
    """|association| annotated with the (signed) values; compared: reference, this report, change."""
    from matplotlib.figure import Figure  # imported here: only plotting needs it, and it is slow to load

    if "reference" in report:
        reference, change = report["reference"], report["change"]
        panels = [
            ("reference |association|", _variables(reference), reference["association"], False),
            ("this report |association|", _variables(report), report["association"], False),
            ("change (this - reference)", change["variables"], change["association"], True),
        ]
    else:
        panels = [("|association|", _variables(report), report["association"], False)]
    size = max(4.0, 0.65 * max(len(names) for _, names, _, _ in panels) + 2.0)
    figure = Figure(figsize=(size * len(panels), size), layout="constrained")
    for axes, (title, names, matrix, diverging) in zip(
        figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        values = np.array([[matrix[a][b] for b in names] for a in names], dtype=float)
        shown = values if diverging else np.abs(values)
        image = axes.imshow(shown, cmap="RdBu_r" if diverging else "viridis", vmin=-1.0 if diverging else 0.0, vmax=1.0)
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axes.set_yticks(range(len(names)), names)
        axes.set_title(title)
        for (i, j), value in np.ndenumerate(values):
            light = abs(shown[i, j]) > 0.6 if diverging else shown[i, j] < 0.5
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if light else "black")
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.savefig(path, dpi=100)


def _interval(pair: dict) -> str:
    if pair["ci_low"] is None:
        return "n/a"
    return f"[{pair['ci_low']:.3f}, {pair['ci_high']:.3f}]"


def _p_value(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<1e-300" if p == 0 else f"{p:.2g}"


def _cell(cell: dict) -> str:
    return f"{cell['label']} x {cell['attribute']}={cell['value']}"


def format_report(report: dict) -> str:
    """A console summary: pairs from the most to the least associated, then scores and groups."""
    settings = report["settings"]
    confidence = f"{settings['confidence']:.0%}"
    lines = [
        f"confounding of label {report['label']!r} and {len(report['attributes'])} attributes, "
        f"{report['n_rows']} rows of {report['source']}",
        f"bootstrap: {settings['n_bootstrap']} resamples, {confidence} percentile intervals, seed {settings['seed']}",
        "",
    ]
    header = ["a", "b", "measure", "value", f"{confidence} CI", "p-value", "NMI"]
    changes = {}
    if "change" in report:
        header.append("change")
        changes = {frozenset((p["a"], p["b"])): p for p in report["change"]["pairs"]}
    rows = [header]
    for pair in sorted(report["pairs"], key=lambda p: -abs(p["value"])):
        row = [pair["a"], pair["b"], pair["measure"], f"{pair['value']:+.3f}", _interval(pair)]
        row += [_p_value(pair["p_value"]), f"{pair['nmi']:.3f}"]
        if changes:
            changed = changes.get(frozenset((pair["a"], pair["b"])))
            row.append("n/a" if changed is None else f"{changed['change']:+.3f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip() for row in rows]

    scores = report["attribute_scores"]
    top = max(scores, key=lambda name: scores[name]["score"])
    lines += ["", f"confounding score: {report['score']:.3f} ({top} with {scores[top]['partner']})"]
    if "change" in report:
        change = report["change"]
        lines.append(f"reference score: {report['reference']['score']:.3f} (change {change['score']:+.3f})")
        lines.append(f"compared: {change['note']}")
        lines += [
            f"  {p['a']}-{p['b']}: measure {p['measure']} here, {p['reference_measure']} in the reference"
            for p in change["pairs"]
            if p["measure"] != p["reference_measure"]
        ]
    lines.append("attribute scores:")
    width = max(len(name) for name in scores)
    lines += [f"  {name.ljust(width)}  {s['score']:.3f}  (with {s['partner']})" for name, s in scores.items()]

    if not report["groups"]:
        lines.append("no label x attribute groups: they need a discrete label and discrete attributes")
        return "\n".join(lines)
    unsupported, tiny = report["unsupported"], report["tiny"]
    lines.append(f"unsupported groups (empty label x attribute cells): {len(unsupported)}")
    lines += [f"  {_cell(cell)}" for cell in unsupported[:LISTED]]
    lines.append(f"tiny groups (fewer than {settings['min_group_size']} rows): {len(tiny)}")
    lines += [f"  {_cell(cell)}: {cell['count']}" for cell in tiny[:LISTED]]
    if len(unsupported) > LISTED or len(tiny) > LISTED:
        lines.append(f"(all of them are listed in {JSON_FILE})")
    return "\n".join(lines)
