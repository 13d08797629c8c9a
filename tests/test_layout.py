"""The package layout follows the flow of the work: dataset -> meter -> judges -> generator ->
counterfactual dataset -> classifier -> report -> command line. No module imports from a later stage
than its own, the library never parses arguments, and module imports form no cycle."""

import ast
from pathlib import Path

import cfgen

PACKAGE = Path(cfgen.__file__).parent
# Earliest first; a module belongs to the last prefix it starts with (cfgen itself is infrastructure).
STAGES = [
    ("infrastructure", ("cfgen", "cfgen.errors", "cfgen.io", "cfgen.runtime", "cfgen.grids", "cfgen.backbones",
                        "cfgen._torchvision_compat")),
    ("dataset", ("cfgen.data", "cfgen.interventions", "cfgen.datasets")),
    ("meter", ("cfgen.confounding",)),
    ("judges", ("cfgen.judges",)),
    ("generator", ("cfgen.generator",)),
    ("counterfactual dataset", ("cfgen.counterfactuals",)),
    ("classifier", ("cfgen.classifier",)),
    ("report", ("cfgen.pipeline",)),
    ("command line", ("cfgen.cli", "cfgen.__main__")),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> int:
    found = [i for i, (_, prefixes) in enumerate(STAGES) for prefix in prefixes
             if module == prefix or (prefix != "cfgen" and module.startswith(prefix + "."))]  # fmt: skip
    assert found, f"{module} belongs to no stage: add it to STAGES"
    return max(found)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cfgen"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("cfgen"))
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_from_a_later_stage():
    backwards = [
        f"{module} ({STAGES[stage_of(module)][0]}) imports {target} ({STAGES[stage_of(target)][0]})"
        for module, path in MODULES.items()
        for target in imports(path)
        if stage_of(target) > stage_of(module)
    ]
    assert not backwards, "\n".join(backwards)


def test_only_the_command_line_parses_arguments():
    parsing = [module for module, path in MODULES.items() if "argparse" in path.read_text()
               and stage_of(module) != len(STAGES) - 1]  # fmt: skip
    assert not parsing, f"argparse outside cfgen.cli: {parsing}"


def test_module_imports_form_no_cycle():
    graph = {
        module: {t for t in imports(path, top_level_only=True) if t in MODULES} for module, path in MODULES.items()
    }
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            assert state.get(target) != "open", "import cycle: " + " -> ".join([*trail, module, target])
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_the_checks_see_a_backward_import(tmp_path):
    """The stage check is not vacuous: a generator module importing the classifier is caught."""
    fake = tmp_path / "bad.py"
    fake.write_text("from cfgen.classifier.training import train_classifiers\n")
    assert stage_of("cfgen.generator.bad") < max(stage_of(t) for t in imports(fake))
