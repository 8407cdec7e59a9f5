"""The README's test command lints and type-checks before any test runs, with pinned tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_test_command_runs_lint_before_pytest_and_ci_calls_only_it() -> None:
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    commands = [line.strip() for line in test_sh.splitlines() if line.strip() and not line.strip().startswith("#")]
    lint = commands.index("scripts/lint.sh")
    pytest_at = next(i for i, c in enumerate(commands) if "-m pytest" in c)
    install = next(i for i, c in enumerate(commands) if "-r requirements-test.txt" in c)
    assert install < lint < pytest_at  # the linters are installed, then run, then the tests
    assert "set -euo pipefail" in commands  # a lint finding stops the run
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1].strip() == "./scripts/test.sh" and not any("pytest" in line or "lint" in line for line in ci)


def test_lint_script_runs_ruff_and_strict_mypy_on_the_product() -> None:
    lint_sh = (ROOT / "scripts" / "lint.sh").read_text()
    assert re.search(r"ruff check .*mirage deployments serve_app benchmarks tests", lint_sh)
    assert ".venv/bin/mypy" in lint_sh and 'exit "$rc"' in lint_sh
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy = config["tool"]["mypy"]
    assert mypy["strict"] is True and mypy["files"] == ["mirage", "deployments", "serve_app"]
    assert not mypy.get("ignore_missing_imports"), "untyped libraries are listed one by one, not ignored wholesale"
    assert {"E", "F", "I", "B", "UP"} <= set(config["tool"]["ruff"]["lint"]["select"])


def test_linters_are_pinned_test_dependencies() -> None:
    test_reqs = (ROOT / "requirements-test.txt").read_text()
    for tool in ("ruff", "mypy", "types-PyYAML"):
        assert re.search(rf"^{re.escape(tool)}==\S+$", test_reqs, re.MULTILINE), tool
