"""The skip logic of tests/services.py: a missing client library skips, fails in CI, and skips
in CI too when ``KNOWN_MISSING`` says it cannot be installed on this Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests import services

ROOT = Path(__file__).resolve().parent.parent
ABSENT = "safepool_tests_no_such_module"


def test_a_missing_library_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT!r} is not importable"):
        services.importorskip(ABSENT)


def test_a_missing_library_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT!r} is not importable"):
        services.importorskip(ABSENT)
    with pytest.raises(pytest.fail.Exception):
        services.import_unless_known_missing(ABSENT)


def test_a_known_missing_library_skips_with_its_reason_even_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setitem(services.KNOWN_MISSING, ABSENT, "no wheel here")
    with pytest.raises(pytest.skip.Exception, match=r"^no wheel here$"):
        services.importorskip(f"{ABSENT}.submodule")
    assert services.import_unless_known_missing(ABSENT) is None


def test_a_module_that_needs_a_known_missing_library_skips_at_collection(tmp_path):
    (tmp_path / "test_needs_it.py").write_text(
        "from tests.services import importorskip\n"
        f"lib = importorskip({ABSENT!r})\n"
        "def test_uses_it():\n"
        "    assert lib\n"
    )
    # The entry is made before pytest imports the module, as the version check does for real.
    run = (
        "import sys, pytest\n"
        "from tests import services\n"
        f"services.KNOWN_MISSING[{ABSENT!r}] = 'no wheel here'\n"
        "sys.exit(pytest.main(['-rs', '-p', 'no:cacheprovider', 'test_needs_it.py']))\n"
    )
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=env)
    # Not 2 (a collection error): the module skipped, which leaves no test to run.
    assert out.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out.stdout + out.stderr
    assert "1 skipped" in out.stdout and "no wheel here" in out.stdout, out.stdout


def test_known_missing_is_what_the_test_extra_leaves_out_on_this_python():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib

    with open(ROOT / "pyproject.toml", "rb") as file:
        extra = tomllib.load(file)["project"]["optional-dependencies"]["test"]
    left_out = {
        req.name.lower().replace("-", "_")
        for req in map(Requirement, extra)
        if req.marker is not None and not req.marker.evaluate()
    }
    assert left_out == set(services.KNOWN_MISSING)
