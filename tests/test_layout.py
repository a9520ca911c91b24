"""The core's layout (docs/architecture.md): which stage may import which, and what each stage offers."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "distillery"
STAGES = ["store", "capture", "gateway", "curation", "training", "evaluation", "serving", "monitoring", "fleet", "demo"]
SHARED = {"errors", "settings", "tasks", "grounding", "models", "wire", "pricing"}

# What each part of the core may import besides the shared modules; the same table is in docs/architecture.md.
ALLOWED = {
    "shared": set(),
    "store": set(),
    "serving": {"store"},
    "evaluation": {"serving"},
    "capture": {"store"},
    "gateway": {"store", "capture", "serving"},
    "curation": {"store"},
    "training": set(),
    "monitoring": {"store", "evaluation"},
    "lifecycle": {"store", "curation", "training", "evaluation", "serving", "monitoring"},
    "fleet": {"store", "serving", "curation", "evaluation"},
    "demo": {"store", "gateway", "serving"},
    "cli": {"store", "capture", "gateway", "serving", "fleet", "demo", "pipelines"},
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
    probe = ("import sys, distillery.gateway.server, distillery.cli, distillery.serving.routing; "
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
