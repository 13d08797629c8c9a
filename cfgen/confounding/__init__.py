"""The confounding meter: how strongly a dataset's label and attributes move together.

``measure`` builds a JSON-able report (pairwise associations with bootstrap intervals and tests,
NMI, empty and tiny label x attribute groups, scores); ``compare`` sets a report against a
reference (for example the data before counterfactual augmentation); ``save_report`` writes
``confounding.json`` and ``confounding.png``; ``format_report`` prints a console table.
Statistics, bootstrap and JSON keys: docs/confounding.md.
"""

from cfgen.confounding.measure import measure
from cfgen.confounding.report import compare, format_report, save_report

__all__ = ["compare", "format_report", "measure", "save_report"]
