"""Progress display: map(progress=...) and safepool.progress(), with tqdm and without."""

from __future__ import annotations

import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import safepool
from safepool import _progress
from tests import obs_tasks


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module", autouse=True)
def _tqdm_lock_made():
    """tqdm makes its process-wide multiprocessing lock (a named semaphore) on first use;
    make it before the per-test leak check starts counting."""
    if _progress._tqdm_module is not None:
        _progress.ProgressBar(1, file=io.StringIO()).close()


@pytest.fixture
def plain(monkeypatch):
    """No tqdm: the plain stderr line is used."""
    monkeypatch.setattr(_progress, "_tqdm_module", None)


def test_map_progress_with_tqdm_counts_every_task(make_pool, capsys):
    pytest.importorskip("tqdm")
    pool = make_pool(2)
    results = list(pool.map(obs_tasks.succeed, range(12), progress="squares"))
    assert results == list(range(12))
    err = capsys.readouterr().err
    assert "squares" in err
    assert "12/12" in err
    # tqdm's monitor thread is not started: a thread left behind would make a later
    # mp_context="fork" executor fork from a threaded process.
    assert "tqdm_monitor" not in {t.name for t in threading.enumerate()}


def test_map_progress_plain_line_on_a_pipe(make_pool, capsys, plain):
    pool = make_pool(2)
    results = list(pool.map(obs_tasks.fail_if_odd, [0, 2, 4, 6], progress=True))
    assert results == [0, 2, 4, 6]
    lines = capsys.readouterr().err.splitlines()
    # Not a terminal: no redraws, only whole lines; the last one is the final count.
    assert re.fullmatch(r"fail_if_odd: 4/4 tasks [\d.]+/s \d+:\d\d", lines[-1])


def test_map_progress_counts_chunks_by_their_items(make_pool, capsys, plain):
    pool = make_pool(2)
    assert list(pool.map(obs_tasks.succeed, range(10), chunksize=4, progress="c")) == list(
        range(10)
    )
    assert capsys.readouterr().err.splitlines()[-1].startswith("c: 10/10 tasks")


def test_progress_helper_yields_as_completed_and_counts_failures(make_pool, plain):
    pool = make_pool(2)
    futures = [pool.submit(obs_tasks.fail_if_odd, n) for n in range(6)]
    out = FakeTTY()
    seen = list(safepool.progress(futures, desc="work", file=out))
    assert sorted(seen, key=futures.index) == futures
    text = out.getvalue()
    assert "\r" in text and text.endswith("\n")  # redrawn in place on a terminal
    final = text.rstrip("\n").split("\r")[-1]
    assert final.startswith("work: 6/6 tasks (3 failed)")


def test_progress_does_not_count_as_retrieving_an_exception(make_pool, plain):
    pool = make_pool(1)
    future = pool.submit(obs_tasks.fail, "x")
    list(safepool.progress([future], file=io.StringIO()))
    assert future._retrieved is False  # an unread failure is still reported later


def test_progress_works_with_any_executor(plain):
    out = io.StringIO()
    with ThreadPoolExecutor(2) as threads:
        futures = [threads.submit(pow, 2, n) for n in range(5)]
        assert sorted(f.result() for f in safepool.progress(futures, file=out)) == [
            1, 2, 4, 8, 16
        ]
    assert out.getvalue().splitlines()[-1].startswith("safepool: 5/5 tasks")


def test_progress_off_by_default_prints_nothing(make_pool, capsys):
    pool = make_pool(1)
    assert list(pool.map(obs_tasks.succeed, range(3))) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_bad_progress_value_is_refused_at_the_call_site(make_pool):
    pool = make_pool(1)
    with pytest.raises(TypeError, match="progress must be"):
        pool.map(obs_tasks.succeed, range(3), progress=3)
