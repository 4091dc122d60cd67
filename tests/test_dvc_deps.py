"""``dvc.yaml`` cannot drift from the code: each stage depends on every project module it runs.

DVC reruns a stage when one of its ``deps`` changes; a module the stage imports but does not list is
a change that leaves a stale result behind with a clean ``dvc status``. The imports are read from the
source (every ``import`` statement, at any depth, so lazy imports count too) and followed through the
project's two packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("reactdiff", "pipelines")
# Data that a module reads from its own package: whoever imports the module depends on it too.
TOP_LEVEL_INITS = ("reactdiff/__init__.py", "pipelines/__init__.py")
PACKAGE_DATA = {"reactdiff/reference.py": "reactdiff/resources"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _project_imports(path: Path, root: Path = ROOT) -> set[str]:
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in names if name.split(".")[0] in PACKAGES}


def imported_files(module: str) -> set[str]:
    """Repository paths of ``module`` and every project module it imports, transitively."""
    start = _module_file(module)
    assert start is not None, f"no module {module}"
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        names = _project_imports(path)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first: a stage depends on those too.
        names |= {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
        todo += [f for f in map(_module_file, names) if f is not None]
    files = {str(p.relative_to(ROOT)) for p in seen}
    return files | {data for code, data in PACKAGE_DATA.items() if code in files}


def test_import_reader_follows_relative_lazy_and_package_imports(tmp_path: Path) -> None:
    files = imported_files("pipelines.windows")
    assert "pipelines/windows.py" in files and "reactdiff/windows.py" in files
    assert "reactdiff/__init__.py" in files  # a package's __init__ runs on import
    module = tmp_path / "pipelines" / "m.py"
    module.parent.mkdir()
    module.write_text("import os\ndef f():\n    from reactdiff import samplers\n    from .x import y\n")
    assert _project_imports(module, root=tmp_path) == {
        "reactdiff",
        "reactdiff.samplers",
        "pipelines.x",
        "pipelines.x.y",
    }


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_its_imports(stage: str) -> None:
    spec = STAGES[stage]
    module = spec["cmd"].split(" -m ", 1)[1].split()[0]
    deps = [str(d).rstrip("/") for d in spec.get("deps", [])]
    # The top-level package __init__ files only set environment defaults (telemetry off, log levels);
    # listing them would rerun the whole DAG for a version bump. They may not import project code. A
    # subpackage's __init__ (reactdiff/metrics/) is code like any module.
    needed = {f for f in imported_files(module) if f not in TOP_LEVEL_INITS}
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} without listing them in deps: add them"
    packages = sorted(
        d for d in deps if d.startswith(PACKAGES) and (ROOT / d).is_dir() and d not in PACKAGE_DATA.values()
    )
    assert not packages, (
        f"dvc.yaml stage {stage!r} lists the source folder(s) {packages}: list their .py files instead "
        "(a folder's hash includes __pycache__, which changes on import and reruns the stage every time)"
    )
    unused = sorted(d for d in deps if d.endswith(".py") and d not in needed)
    assert not unused, f"dvc.yaml stage {stage!r} lists {unused}, which it never imports: remove them"


def test_package_inits_import_no_project_module() -> None:
    for init in TOP_LEVEL_INITS:
        assert _project_imports(ROOT / init) <= {"reactdiff"}, f"{init} imports project modules"
