"""The core's layout (docs/architecture.md): which stage may import which, and what each stage offers."""

import ast
import re
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "distillery"
STAGES = ["store", "capture", "gateway", "curation", "training", "evaluation", "serving", "routing", "monitoring", "fleet",
          "demo"]
SHARED = {"errors", "settings", "tasks", "grounding", "models", "wire", "pricing", "students"}

# What each part of the core may import besides the shared modules; the same table is in docs/architecture.md.
ALLOWED = {
    "shared": set(),
    "store": set(),
    "routing": {"store"},
    "serving": {"store"},
    "evaluation": {"serving"},
    "capture": {"store"},
    "gateway": {"store", "capture", "routing"},
    "curation": {"store"},
    "training": set(),
    "monitoring": {"store", "evaluation"},
    "lifecycle": {"store", "curation", "training", "evaluation", "serving", "routing", "monitoring"},
    "fleet": {"store", "routing", "curation", "evaluation"},
    "demo": {"store", "gateway", "serving", "routing"},
    "cli": {"store", "capture", "gateway", "serving", "routing", "fleet", "demo", "pipelines"},
}
OUTSIDE_THE_CORE = ("pipelines", "assets", "resources", "workers", "support", "dagster", "aiohttp")


def _part(module: str) -> str:
    """The part of the core a dotted module belongs to (a stage, ``shared``, lifecycle, cli) or its top package."""
    parts = module.split(".")
    if parts[0] != "distillery":
        return parts[0]
    name = parts[1] if len(parts) > 1 else "distillery"
    return "shared" if name in SHARED else name


def _imports(path: Path):
    """(imported module, enclosing top-level function or None) for every import, function-level ones included."""
    tree = ast.parse(path.read_text())
    for top in tree.body:
        function = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                yield from ((alias.name, function) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "distillery":  # `from distillery import curation` imports the stage
                    yield from ((f"distillery.{alias.name}", function) for alias in node.names)
                else:
                    yield node.module, function


def _core_modules():
    for path in sorted(CORE.rglob("*.py")):
        module = ".".join(path.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")
        yield module, path


def test_each_part_of_the_core_imports_only_what_the_architecture_allows():
    wrong = []
    for module, path in _core_modules():
        source = _part(module)
        for imported, function in _imports(path):
            target = _part(imported)
            if imported.startswith("distillery") and target not in (source, "shared", "distillery"):
                if target not in ALLOWED[source]:
                    wrong.append(f"{module} imports {imported}")
            elif target in OUTSIDE_THE_CORE and not (module == "distillery.cli" and imported == "pipelines.run"):
                wrong.append(f"{module} imports {imported} (outside the framework-free core)")
    assert not wrong, "\n".join(wrong)


def _lazy_names(package: Path) -> dict[str, str]:
    """A stage's public names and the module of each, read from its ``__init__``'s ``lazy_loader.attach`` table."""
    for node in ast.walk(ast.parse((package / "__init__.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "submod_attrs":
            table = ast.literal_eval(node.value)
            return {name: module for module, names in table.items() for name in names}
    return {}


def _module_graph() -> dict[str, set[str]]:
    """Which core module imports which, function-level imports included; a name imported from a stage package counts
    as an import of the module that defines it (the stages load their modules lazily)."""
    modules = dict(_core_modules())
    lazy = {module: _lazy_names(path.parent) for module, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [alias.name for alias in node.names]
                targets = [f"{node.module}.{lazy[node.module][name]}" if name in lazy.get(node.module, {})
                           else f"{node.module}.{name}" if f"{node.module}.{name}" in modules else node.module
                           for name in names]
            else:
                continue
            graph[module] |= {target for target in targets if target in modules and target != module}
    return graph


def test_no_module_of_the_core_imports_itself_through_others():
    graph = _module_graph()
    assert graph["distillery.tasks"] >= {"distillery.grounding"}  # the graph sees through imports inside functions
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_only_the_clis_demo_commands_import_the_demo():
    importers = [(module, function) for module, path in _core_modules() if _part(module) != "demo"
                 for imported, function in _imports(path) if _part(imported) == "demo"]
    assert importers and set(importers) <= {("distillery.cli", "demo"), ("distillery.cli", "standin")}, importers


def test_the_cli_reaches_dagster_only_through_run_lifecycle():
    from pipelines.run import run_lifecycle

    calls = [(imported, function) for imported, function in _imports(CORE / "cli.py") if _part(imported) == "pipelines"]
    assert calls == [("pipelines.run", "_run_lifecycle")] and callable(run_lifecycle)


@pytest.mark.parametrize("stage", STAGES)
def test_every_public_name_of_a_stage_resolves(stage):
    package = importlib.import_module(f"distillery.{stage}")
    assert package.__all__, f"distillery.{stage} names no public API"
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert not missing, f"distillery.{stage} lists names its modules do not define: {missing}"


def test_the_gateway_and_the_cli_load_without_torch_or_datasets():
    """Stage packages load their modules on first use, so the gateway does not pay for the model stack."""
    probe = ("import sys, distillery.gateway.server, distillery.cli, distillery.routing.table; "
             "print(sorted(m for m in ('torch', 'datasets', 'transformers', 'dagster') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_readme_layout_matches_the_tree():
    root = CORE.parent
    block = (root / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed = {word.rstrip("/") for line in block.splitlines() for word in line.split()
              if word.endswith("/") or word.endswith(".py")}
    tracked = [Path(line) for line in subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                                                     check=True).stdout.splitlines()]
    top_folders = {path.parts[0] for path in tracked if len(path.parts) > 1 and not path.parts[0].startswith(".")}
    core = {path.parts[1] for path in tracked if path.parts[0] == "distillery" and path.name != "__init__.py"}
    assert top_folders | core <= listed, f"not in the README's layout: {sorted((top_folders | core) - listed)}"
    names_in_tree = {part for path in tracked for part in path.parts}
    assert listed <= names_in_tree, f"the README's layout lists what is not in the tree: {sorted(listed - names_in_tree)}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, blanks as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_docs_link_of_the_readme_and_the_docs_resolves():
    root = CORE.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken, readme_docs_links = [], 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve()
            readme_docs_links += page.name == "README.md" and path.startswith("docs/")
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in {
                    _anchor(line.lstrip("#")) for line in resolved.read_text().splitlines() if line.startswith("#")}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert readme_docs_links >= 8 and not broken, "\n".join(broken)


def test_the_readme_is_a_guide_without_dated_run_logs():
    readme = (CORE.parent / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert not re.findall(r"20\d\d-[01]\d-[0-3]\d", readme), "dated figures belong in docs/benchmarks.md"
