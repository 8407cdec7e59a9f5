"""The runtime dependency list stays free of test-only packages, and the product never imports one.

requirements.txt is what the Docker image and scripts/setup.sh install; requirements-test.txt adds
what only tests, benchmarks and the linters need. Each test-only distribution's top-level modules
come from its installed metadata, and every import in mirage/, deployments/ and serve_app/ (module
level or inside a function, and ``importlib.import_module("...")`` with a literal name) is checked
against them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("mirage", "deployments", "serve_app")


def _names(path: Path) -> list[str]:
    """Distribution names (normalised) pinned in a requirements file, ``-r`` includes skipped."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        names.append(_normalise(re.split(r"[=<>~!\[ ;]", line, maxsplit=1)[0]))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_modules(dist_name: str) -> set[str]:
    dist = importlib.metadata.distribution(dist_name)
    modules: set[str] = set()
    for file in dist.files or []:
        parts = Path(str(file)).parts
        if not parts or parts[0] == ".." or parts[0].endswith((".dist-info", ".libs", ".data")) or parts[0] == "__pycache__":
            continue
        top = parts[0]
        if top.endswith(".py"):
            modules.add(top[:-3])
        elif top.endswith(".so"):
            modules.add(top.split(".", 1)[0])
        elif len(parts) > 1:
            modules.add(top)
    return {m for m in modules if m.isidentifier()}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_test_only_packages_are_not_in_the_runtime_list() -> None:
    runtime = set(_names(ROOT / "requirements.txt"))
    test_only = set(_names(ROOT / "requirements-test.txt"))
    assert (ROOT / "requirements-test.txt").read_text().splitlines().count("-r requirements.txt") == 1
    assert runtime and test_only
    assert not runtime & test_only, f"listed in both: {sorted(runtime & test_only)}"
    for name in ("pytest", "pytest-timeout", "playwright", "dlib-bin", "praat-parselmouth", "ruff", "mypy"):
        assert name in test_only and name not in runtime
    # The GPU and no-deps extras of the image never name a test-only package either.
    for extra in ("requirements-gpu.txt", "requirements-nodeps.txt"):
        assert not set(_names(ROOT / extra)) & test_only, extra


def test_product_never_imports_a_test_only_package() -> None:
    runtime = set(_names(ROOT / "requirements.txt"))
    forbidden: dict[str, str] = {}
    for name in _names(ROOT / "requirements-test.txt"):
        if name in runtime or name.startswith("types-"):  # stub packages hold no importable module
            continue
        modules = _top_level_modules(name)
        assert modules, f"{name}: no top-level module found in its installed files"
        forbidden.update((module, name) for module in modules)
    assert {"pytest", "playwright", "dlib", "parselmouth", "mypy"} <= set(forbidden)

    files = [p for package in PRODUCT for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50
    offenders = [
        f"{path.relative_to(ROOT)} imports {module} ({forbidden[module]})"
        for path in files
        for module in sorted(_imports(path))
        if module in forbidden
    ]
    assert not offenders, "; ".join(offenders)


def test_the_import_scan_sees_lazy_and_dynamic_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "def f():\n"
        "    import pytest.mark\n"
        "    from playwright.sync_api import sync_playwright\n"
        "    return importlib.import_module('parselmouth')\n"
        "from . import sibling\n"
    )
    assert _imports(probe) == {"os", "pytest", "playwright", "parselmouth"}
