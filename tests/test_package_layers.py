"""The package layers of docs/architecture.md hold: ``vggt_core`` is a library that knows nothing
of Gradio or the server (``vggt_app``), and its network knows nothing of files or numpy."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import vggt_core

REPO_ROOT = Path(__file__).resolve().parent.parent

# Imports every module of vggt_core in a fresh interpreter, then lists what got imported.
WALK_IMPORTS = """
import importlib, json, pkgutil, sys
import vggt_core
names = [info.name for info in pkgutil.walk_packages(vggt_core.__path__, "vggt_core.")
         if not info.name.endswith("__main__")]  # that one runs the CLI
for name in names:
    importlib.import_module(name)
print(json.dumps({"walked": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_all_of_vggt_core_loads_no_gradio_and_no_server_module():
    result = subprocess.run([sys.executable, "-c", WALK_IMPORTS], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["walked"]) > 40  # really walked the package (model, export, training, …)
    assert {"vggt_core.model.vggt", "vggt_core.export", "vggt_core.training.trainer"} <= set(report["walked"])
    loaded = report["loaded"]
    assert not [name for name in loaded if name == "gradio" or name.startswith("gradio.")]
    assert not [name for name in loaded if name == "gradio_client" or name.startswith("gradio_client.")]
    assert not [name for name in loaded if name == "vggt_app" or name.startswith("vggt_app.") or name == "app"]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_vggt_core_source_names_the_server_or_gradio():
    offenders = {}
    for info in pkgutil.walk_packages(vggt_core.__path__, "vggt_core."):
        spec = info.module_finder.find_spec(info.name)
        path = Path(spec.origin)
        bad = imported_modules(path) & {"gradio", "gradio_client", "vggt_app", "app", "fastapi", "uvicorn"}
        if bad:
            offenders[info.name] = sorted(bad)
    assert offenders == {}


def test_the_network_knows_nothing_of_files_or_numpy():
    model_dir = Path(vggt_core.__file__).parent / "model"
    for path in sorted(model_dir.glob("*.py")):
        assert not imported_modules(path) & {"numpy", "PIL", "pathlib", "os", "io", "json"}, path.name


def test_the_app_package_never_reaches_back_from_the_store_or_runtime():
    """store/ and runtime/ are the app's bottom rooms: they import neither the page nor the panels."""
    app_dir = REPO_ROOT / "vggt_app"
    for room in ("store", "runtime"):
        for path in sorted((app_dir / room).glob("*.py")):
            source = path.read_text(encoding="utf-8")
            for higher in ("panels", "page", "service", "renderer", "main"):
                assert f"from ..{higher}" not in source and f"vggt_app.{higher}" not in source, (path, higher)
