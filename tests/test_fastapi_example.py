"""The FastAPI example of docs/asyncio.md, taken from the page, run with real workers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.services import importorskip

pytestmark = [
    pytest.mark.timeout(60),
    # Starlette's TestClient warns that it prefers httpx2, which needs Python 3.11+.
    pytest.mark.filterwarnings("ignore:Using `httpx`:DeprecationWarning"),
]

PAGE = Path(__file__).parent.parent / "docs" / "asyncio.md"


def example_files() -> dict[str, str]:
    """The page's Python blocks that start with ``# <name>.py``, by file name."""
    blocks = re.findall(r"```python\n(# (\w+\.py).*?\n.*?)```", PAGE.read_text(), re.S)
    return {name: code for code, name in blocks}


@pytest.fixture
def example(tmp_path, monkeypatch):
    """Write the example's files, make them importable (here and in workers), load app.py."""
    importorskip("fastapi")
    importorskip("httpx")
    files = example_files()
    assert set(files) == {"reports.py", "app.py"}

    def load(replace: tuple[str, str] | None = None):
        for name, code in files.items():
            if replace is not None and name == "app.py":
                assert replace[0] in code
                code = code.replace(*replace)
            (tmp_path / name).write_text(code)
        monkeypatch.syspath_prepend(str(tmp_path))
        for name in ("app", "reports"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        import app

        return app.app

    return load


def test_the_requests_timeout_stops_the_worker(example):
    from fastapi.testclient import TestClient

    with TestClient(example()) as client:
        quick = client.get("/report", params={"seconds": 0.1})
        assert (quick.status_code, quick.json()) == (200, {"report": "report built in 0.1 s"})
        slow = client.get("/report", params={"seconds": 30})
        assert slow.status_code == 504
        assert client.get("/stats").json() == {"completed": 1, "stopped": 1, "running": 0}
    # Leaving the lifespan did not wait 30 s: nothing was left running (pytest-timeout: 60 s).


def test_with_run_in_executor_the_same_request_leaves_its_work_running(example):
    """What the page says happens without safepool's run(): the report runs on."""
    from fastapi.testclient import TestClient

    app = example((
        "app.state.pool.run(render_report, seconds)",
        "asyncio.get_running_loop().run_in_executor(app.state.pool, render_report, seconds)",
    ))
    with TestClient(app) as client:
        assert client.get("/report", params={"seconds": 0.1}).status_code == 200
        assert client.get("/report", params={"seconds": 3}).status_code == 504
        assert client.get("/stats").json() == {"completed": 1, "stopped": 0, "running": 1}
