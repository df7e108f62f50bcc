"""The library's shape: its modules import in one direction only, never streamlit, and light commands stay light."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import landmark_core

PACKAGE = Path(landmark_core.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every landmark_core module ``path`` imports, at module level or inside functions (a lazy import still counts)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports name types for annotations; nothing runs them
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("landmark_core"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("landmark_core"):
                continue
            # `from . import data` names a module; `from .config import X` names something in one
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES
            found.update(submodules or {target})
    # importing a.b.c runs the package a.b first
    for target in list(found):
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    found.discard(name)
    found.discard("landmark_core")
    return {target for target in found if target in MODULES and not name.startswith(target + ".")}


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}
GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_acyclic():
    assert len(GRAPH) > 20
    assert GRAPH["landmark_core.pipeline"] >= {"landmark_core.training.engine", "landmark_core.evaluation.evaluate"}
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_training_layers_import_downward_only():
    """The engine knows nothing of run folders' lifecycle; evaluation and export never import the pipeline."""
    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in GRAPH[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    export = {m for m in MODULES if m.startswith("landmark_core.export")}
    assert "landmark_core.pipeline" not in reaches("landmark_core.evaluation.evaluate")
    assert "landmark_core.pipeline" not in set().union(*(reaches(m) for m in export))
    assert not ({"landmark_core.pipeline", "landmark_core.evaluation.evaluate"} | export) & reaches("landmark_core.training.engine")
    cli = {m for m in MODULES if m.startswith("landmark_core.cli")}
    outside_cli = set().union(*(reaches(m) for m in MODULES - cli if m != "landmark_core.__main__"))
    assert not cli & outside_cli


README = PACKAGE.parent / "README.md"


def readme_layers() -> dict[str, int]:
    """Each top-level package or module of landmark_core -> its row in the README's layer table (0: the top row)."""
    text = README.read_text()
    table = text[text.index("## Architecture"):text.index("## Tests")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    layers = {}
    for rank, row in enumerate(rows):
        packages = row.split("|")[2]
        for name in re.findall(r"`([\w.]+)`", packages):
            layers[name] = rank
    return layers


def top_level(module: str) -> str:
    return module.split(".")[1]


def test_the_readme_layer_table_names_every_package_once():
    layers = readme_layers()
    found = {top_level(m) for m in MODULES if m != "landmark_core"}
    assert found == set(layers), f"in the package, not the table: {found - set(layers)}; in the table only: {set(layers) - found}"


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() if module != "landmark_core"
                  for target in targets if layers[top_level(target)] > layers[top_level(module)])


def test_each_package_imports_only_its_own_layer_or_those_above_it_in_the_table():
    assert upward_imports(GRAPH, readme_layers()) == []


def test_the_layer_check_sees_an_upward_import():
    layers = readme_layers()
    assert layers["core"] < layers["training"] < layers["pipeline"] < layers["cli"]
    upward = {"landmark_core.core.errors": {"landmark_core.pipeline"}, "landmark_core.pipeline": {"landmark_core.core.errors"}}
    assert upward_imports(upward, layers) == ["landmark_core.core.errors imports landmark_core.pipeline"]


def test_the_layout_shows_the_layers():
    """A package per layer, few modules at the top, no file too long to read."""
    top_modules = [path for path in PACKAGE.glob("*.py")]
    packages = [path for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()]
    assert len(top_modules) <= 6, sorted(path.name for path in top_modules)
    assert len(packages) >= 6
    too_long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
                if (n := len(path.read_text().splitlines())) > 450}
    assert too_long == {}


def test_the_library_never_imports_streamlit():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not any(name.split(".")[0] == "streamlit" for name in names), path
    modules = " ".join(sorted(m for m in MODULES if not m.endswith("__main__")))
    code = f"import importlib, sys\nfor m in '{modules}'.split(): importlib.import_module(m)\nprint('streamlit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_light_commands_do_not_import_torch(tmp_path):
    """`landmark runs` and `--help` answer without loading torch (seconds and ~900 MB saved)."""
    code = ("import contextlib, io, sys\nfrom landmark_core.cli import main\n"
            "for argv in (['runs'], ['runs', '--json'], ['--help'], ['train', '--help'], ['tag', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"LANDMARK_ARTIFACTS": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


ROOT = PACKAGE.parent
OUTSIDE_THE_RUNS_PACKAGE = [p for p in PACKAGE.rglob("*.py") if "runs" not in p.relative_to(PACKAGE).parts[:1]] + \
    sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def test_only_the_runs_package_names_a_runs_files():
    """``Run`` is the handle on a run: elsewhere nothing joins a run folder and one of its file names."""
    spelled = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in OUTSIDE_THE_RUNS_PACKAGE
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if re.search(r"run_dir / |/ Run\.[A-Z_]+\b", line)]
    assert spelled == []


def string_state_comparisons(source: str) -> list[str]:
    """Comparisons of a ``.state`` or ``.status`` (or a ``state`` / ``status`` variable) with string literals."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        named = (isinstance(left, ast.Attribute) and left.attr in ("state", "status")) or (
            isinstance(left, ast.Name) and left.id in ("state", "status"))
        literal = any(isinstance(side, ast.Constant) and isinstance(side.value, str) for side in node.comparators) or any(
            isinstance(side, (ast.Tuple, ast.List, ast.Set)) and any(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                                    for e in side.elts) for side in node.comparators)
        if named and literal:
            found.append(ast.unparse(node))
    return found


def test_states_are_compared_as_enums_not_strings():
    compared = {str(path.relative_to(ROOT)): found for path in OUTSIDE_THE_RUNS_PACKAGE
                if (found := string_state_comparisons(path.read_text()))}
    assert compared == {}


def test_the_state_check_sees_a_string_comparison():
    assert string_state_comparisons('if run.state == "finished": pass') == ["run.state == 'finished'"]
    assert string_state_comparisons('ok = status in ("tagged", "failed")') == ["status in ('tagged', 'failed')"]
    assert string_state_comparisons("if run.state == RunState.FINISHED: pass") == []
