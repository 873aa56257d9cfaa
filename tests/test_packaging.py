"""pyproject.toml: the ``vggt`` command is what ``python -m vggt_core`` runs, and the package
metadata follows requirements.txt."""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def _function_main_module_calls():
    """The function ``vggt_core/__main__.py`` passes to ``sys.exit``, read from its source (running
    the module would run the CLI)."""
    tree = ast.parse((REPO_ROOT / "vggt_core" / "__main__.py").read_text())
    imported = {alias.asname or alias.name: (node.module, node.level, alias.name)
                for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    exits = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func) == "sys.exit"]
    assert len(exits) == 1 and isinstance(exits[0].args[0], ast.Call)
    module, level, name = imported[ast.unparse(exits[0].args[0].func)]
    package = "vggt_core" if level == 1 else ""
    return getattr(importlib.import_module(f"{package}.{module}" if package else module), name)


def test_the_vggt_command_runs_what_python_m_vggt_core_runs():
    target = _pyproject()["project"]["scripts"]["vggt"]
    module, _, attribute = target.partition(":")
    entry_point = getattr(importlib.import_module(module), attribute)
    assert entry_point is _function_main_module_calls()


def test_dependencies_mirror_requirements_txt():
    requirements = []
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            requirements.append(re.sub(r"\s+", "", requirement))
    project = _pyproject()["project"]
    assert project["dependencies"] == requirements
    assert project["requires-python"] == ">=3.11"
    assert "vggt_core*" in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]


def test_gradio_is_pinned_to_the_spaces_sdk_version():
    """A clean install resolves one Gradio, the one the Space runs (README's header), with no backtracking."""
    header = (REPO_ROOT / "README.md").read_text().split("---")[1]
    sdk_version = re.search(r"^sdk_version:\s*(\S+)\s*$", header, re.M).group(1)
    pins = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
            if line.startswith("gradio")]
    assert pins == [f"gradio=={sdk_version}"]
