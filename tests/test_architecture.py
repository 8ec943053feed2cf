"""The package's import structure: one-way layers, no cycles, components free of the config.

Every module under retinanet/ is parsed (not imported) and every `import` / `from ... import`
counts, also those inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "retinanet"

# Lower layers never import higher ones; modules of the same layer may import each other.
LAYERS = {
    "detection": 0, "model": 0, "runtime": 0, "errors": 0,  # the components: no config
    "visualize": 1,  # images and boxes only: imports detection and runtime
    "config": 1,
    "data": 2,  # reading the real data, the input pipeline
    "synthetic": 3,  # generating data sets: called by the commands, never on the training path
    "run_directory": 3,  # the contract of a run directory that train, evaluate and serve share
    "builders": 4, "train": 4,  # the one mapping of the config onto components, training's among them
    "analysis": 5, "evaluate": 5, "serve": 5,
    "experiments": 6,  # what trains and evaluates: cross-validation
    "commands": 7, "cli": 7, "__main__": 8,
}
TOP_LEVEL_ALLOWANCE = 6  # modules at the top of retinanet/ besides __init__, __main__ and cli


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The retinanet modules `path` imports; `from package import name` counts as the
    submodule when `name` is one."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {item for item in found if item in modules and item != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


GRAPH = import_graph()


def test_the_graph_sees_the_package():
    assert "retinanet.detection.losses" in GRAPH and "retinanet.cli" in GRAPH
    assert "retinanet.detection.boxes" in GRAPH["retinanet.detection.losses"]
    assert "retinanet.config.schema" in GRAPH["retinanet.config"]


def test_every_module_has_a_layer():
    assert sorted({module.split(".")[1] for module in GRAPH if "." in module} - set(LAYERS)) == []


def test_no_import_cycle():
    # Package __init__ files re-export their submodules: a submodule importing a sibling
    # through the package is not a cycle of code, so edges into an __init__ from its own
    # subpackage are left out.
    def edges(module):
        return {target for target in GRAPH[module] if not module.startswith(target + ".")}

    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module, path):
        state[module] = 1
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_imports_flow_down_the_layers():
    upward = [f"{module} -> {target}" for module, targets in sorted(GRAPH.items()) for target in sorted(targets)
              if layer_of(module) is not None and layer_of(target) is not None
              and layer_of(target) > layer_of(module)]
    assert upward == []


def test_visualize_imports_only_detection_and_runtime():
    # Box math and the writes that keep the previous file: nothing above the components.
    allowed = ("retinanet.detection", "retinanet.runtime")
    assert all(target.startswith(allowed) for target in GRAPH["retinanet.visualize"])


def test_components_do_not_read_the_config():
    readers = [f"{module} -> {target}" for module, targets in sorted(GRAPH.items()) for target in sorted(targets)
               if module.split(".")[1:2] in (["detection"], ["model"]) and target.startswith("retinanet.config")]
    assert readers == []


def test_few_modules_at_the_top_of_the_package():
    top = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__", "cli"))
    assert len(top) <= TOP_LEVEL_ALLOWANCE, top


def imports_from(package: str, source_packages: tuple[str, ...]) -> list[str]:
    """The imports of `retinanet.<package>` by modules of the `source_packages` (top-level modules count
    as packages of their own name)."""
    return [f"{module} -> {target}" for module, targets in sorted(GRAPH.items()) for target in sorted(targets)
            if module.split(".")[1:2] and module.split(".")[1] in source_packages
            and target.startswith(f"retinanet.{package}")]


def test_serving_imports_nothing_of_training():
    # Inference needs the run directory's contract (retinanet.run_directory), not the trainer.
    assert imports_from("train", ("serve",)) == []


def test_nothing_on_the_training_path_generates_data():
    # The demo's synthetic data is the commands' explicit step; reading, training, evaluating and
    # serving read what is there.
    training_path = ("data", "builders", "run_directory", "train", "evaluate", "serve", "experiments", "analysis")
    assert imports_from("synthetic", training_path) == []


def test_no_module_of_the_package_is_benchmark_code():
    # Benchmarks live in benchmarks/ at the repository root and import each other by plain names
    # (`import peer`): the package has no bench subpackage and imports none of them.
    assert [module for module in GRAPH if module.startswith("retinanet.bench")] == []
    benchmark_names = {"benchmarks", *(path.stem for path in (PACKAGE.parent / "benchmarks").glob("*.py"))}
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            importers += [f"{module_name(path)} -> {name}" for name in names if name.split(".")[0] in benchmark_names]
    assert importers == []


def documented_modules() -> set[str]:
    """The modules docs/architecture.md's package map names, as paths under retinanet/ ("data/dicom.py"):
    the file names that begin an entry, under the folder heading above them."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = text.split("## Package map", 1)[1].split("```")[1]
    named, folder = set(), ""
    for line in block.splitlines():
        entry = re.match(r"^( {2}| {4})((?:\w+\.py,? ?)+|\w+/)", line)
        if entry is None:
            continue  # a description's next line
        indent, names = len(entry.group(1)), entry.group(2)
        if indent == 2:
            folder = names if names.endswith("/") else ""
        named |= {folder + name for name in re.findall(r"\w+\.py", names)}
    return named


def test_the_docs_map_names_every_module():
    modules = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
               if path.name != "__init__.py" or path.parent == PACKAGE}
    documented = documented_modules()
    assert sorted(modules - documented) == [] and sorted(documented - modules) == []
