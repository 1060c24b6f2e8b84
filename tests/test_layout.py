"""The package's shape: layering (import-linter's contracts in pyproject.toml, also run by CI as `lint-imports`),
no private names imported across modules, and functions short enough to read at once."""

import ast
from pathlib import Path

import pytest

LLM = Path(__file__).resolve().parents[1] / "llm"


def modules():
    return sorted(p for p in LLM.rglob("*.py"))


def test_no_private_names_are_imported_across_modules():
    offenders = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm"):
                offenders += [f"{path.relative_to(LLM.parent)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_functions_fit_on_a_screen():
    """At most 60 lines a function in the trainer's package, 80 elsewhere; the Pallas kernels (one kernel body
    each) are exempt."""
    long = []
    for path in modules():
        if "kernels" in path.parts:
            continue
        limit = 60 if "training" in path.parts else 80
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= limit:
                long.append(f"{path.relative_to(LLM.parent)}:{node.lineno} {node.name}")
    assert long == []


def test_the_layering_contracts_hold():
    importlinter = pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    assert importlinter and lint_imports(config_filename=str(LLM.parent / "pyproject.toml"), no_cache=True) == 0


def test_the_suites_scheduling_names_files_that_exist():
    """conftest's longest-first order names test files by path: a renamed file must not fall silently to the end."""
    from conftest import LAST, LONGEST_FIRST

    tests = Path(__file__).parent
    assert [name for name in (*LONGEST_FIRST, *LAST) if not (tests / name).is_file()] == []
