"""Run CPython's own ProcessPoolExecutor tests against safepool.

A developer tool, not part of the test suite. It runs every ProcessPool test of CPython's
``test.test_concurrent_futures`` package (``test_process_pool``, ``test_deadlock``,
``test_shutdown``, ``test_init``, ``test_wait``, ``test_as_completed``, ``test_future``; the
``ExecutorTest`` bodies of ``executor.py`` are mixed into ``test_process_pool``'s classes)
under the fork, spawn and forkserver start methods, with ``safepool.Executor`` in place of
``concurrent.futures.ProcessPoolExecutor``, on each interpreter asked for.

Setup, once per interpreter: a venv with safepool's two dependencies (safepool itself comes
from the working tree through PYTHONPATH, which the tool sets):

    $(pyenv root)/versions/3.13.0/bin/python3.13 -m venv /tmp/cps313
    /opt/python/3.14/bin/python3.14 -m venv /tmp/cps314
    /opt/python/3.15/bin/python3.15 -m venv /tmp/cps315
    for v in 313 314 315; do /tmp/cps$v/bin/pip install -q psutil pebble; done

Run (any Python 3.10+ runs the tool itself; the tests run in the interpreters asked for):

    python3 tools/cpython_suite.py                        # 3.13, 3.14, 3.15; all modules
    python3 tools/cpython_suite.py --python 3.14 --start-methods spawn,forkserver \\
        --modules test_process_pool,test_deadlock --json /tmp/cps.json
    python3 tools/cpython_suite.py --python 3.15=/some/python3.15 -k test_killed_child
    python3 tools/cpython_suite.py test_init test_wait    # positional modules, as before

``--python`` takes versions (``3.14``), paths to interpreters, or ``VERSION=PATH``. For a
version the first of these that imports psutil and pebble is used: ``/tmp/cpsXY``,
``.tox/pyXY`` in the repository, the base interpreter (``$(pyenv root)/versions/3.13.0``,
``/opt/python/3.14``, ``/opt/python/3.15``). The interpreter must ship ``Lib/test`` (pyenv's
3.11 and 3.12 builds here do not).

How it is bounded. Each (interpreter, module, start method) runs in its own child process
(``tools/_cpython_suite_child.py``), in a new session, one at a time:

* inside the child a faulthandler watchdog, re-armed at each test's start and end, dumps
  every thread's stack and exits the child when one test (or the fixture code between two
  tests) takes longer than ``--test-timeout`` seconds; that test is reported as *hung* (with
  the top of its stack) and a new child runs the tests that had not started;
* the child also gets ``--exit-timeout`` seconds for interpreter exit (atexit hooks of
  multiprocessing and safepool) once the suite is done;
* the tool gives each (module, start method) ``--job-timeout`` seconds of wall clock in all;
  when that expires it kills the child's process tree and reports the test that was running,
  and those not reached, as *hung*;
* the tool makes itself a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so processes
  that left the child's process group (safepool workers call ``setsid``) and outlived it are
  reparented to the tool; after each child exits they get a few seconds to exit on their own,
  then they are killed and listed as *leftover processes* of that job.

Output: per interpreter, a table of passed/failed/errored/skipped/hung counts per start
method (``--by-module`` adds a row per module), then each test that did not pass or skip with
the first lines of its error, grouped across start methods when the error is the same.
``--json PATH`` writes every test's outcome, full traceback, duration and the
``test.support`` warnings it printed (dangling threads, reaped children). A job's directory
(the child's output, its event log, the watchdog's stack dumps) is kept in the temp directory
when something in it hung or died (``--keep-logs``: always); the report names it.

A hang outside any test is reported as a pseudo-test: ``<module>.<fixtures>`` (class or module
set-up/clean-up code, e.g. ``multiprocessing.util._cleanup_tests`` waiting for processes that
a failed test's executor left running) or ``<module>.<interpreter exit>``.

Exit status: 0 if every test passed or skipped, 1 if any failed, errored or hung (some do, on
purpose: docs/migrating.md explains them), 2 if an interpreter could not be used.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().with_name("_cpython_suite_child.py")

DEFAULT_VERSIONS = ["3.13", "3.14", "3.15"]
MODULES = [
    "test_process_pool",
    "test_deadlock",
    "test_shutdown",
    "test_init",
    "test_wait",
    "test_as_completed",
    "test_future",
]
START_METHODS = ["fork", "spawn", "forkserver"]
OUTCOMES = ["passed", "failed", "errored", "skipped", "hung"]
MIXIN_PREFIX = re.compile(r"\bProcessPool(Forkserver|Spawn|Fork)(?=[A-Z])")


# ---------------------------------------------------------------- interpreters


def _base_interpreter(version: str) -> list[str]:
    if version == "3.13":
        root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
        try:
            root = subprocess.run(
                ["pyenv", "root"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip() or root
        except (OSError, subprocess.SubprocessError):
            pass
        return [f"{root}/versions/3.13.0/bin/python3.13"]
    return [f"/opt/python/{version}/bin/python{version}"]


def _candidates(version: str) -> list[str]:
    nodot = version.replace(".", "")
    return [
        f"/tmp/cps{nodot}/bin/python",
        str(REPO / ".tox" / f"py{nodot}" / "bin" / "python"),
        *_base_interpreter(version),
    ]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.pop("PYTHONSTARTUP", None)
    return env


_PROBE = (
    "import sys, psutil, pebble, safepool, test.test_concurrent_futures.util;"
    "print(sys.version.split()[0])"
)


def _probe(python: str) -> tuple[str | None, str]:
    """(full version, '') if ``python`` can run the suite, else (None, why not)."""
    if not os.path.exists(python):
        return None, "not found"
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
            env=_child_env(), cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit code {out.returncode}"
    return out.stdout.strip(), ""


def resolve_interpreter(spec: str) -> tuple[str, str | None, str | None, str]:
    """(label, python, full version, problem) for a --python item."""
    if "=" in spec:
        label, python = spec.split("=", 1)
        full, problem = _probe(python)
        return label, python if full else None, full, problem
    if re.fullmatch(r"\d+\.\d+", spec):
        problems = []
        for python in _candidates(spec):
            full, problem = _probe(python)
            if full:
                return spec, python, full, ""
            problems.append(f"{python}: {problem}")
        nodot = spec.replace(".", "")
        hint = (
            f"create one: {_base_interpreter(spec)[0]} -m venv /tmp/cps{nodot} && "
            f"/tmp/cps{nodot}/bin/pip install psutil pebble"
        )
        return spec, None, None, "; ".join(problems) + "; " + hint
    full, problem = _probe(spec)
    label = ".".join(full.split(".")[:2]) if full else spec
    return label, spec if full else None, full, problem


# ----------------------------------------------------------- process clean-up


def _become_subreaper() -> bool:
    """Orphaned descendants get reparented to this process (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 2:
            table[int(entry)] = (int(rest[1]), rest[0])
    return table


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of ``root``, parents before children."""
    table = _proc_table()
    children = defaultdict(list)
    for pid, (ppid, _state) in table.items():
        children[ppid].append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return [pid for pid in found if table.get(pid, (0, "Z"))[1] not in ("Z", "X")]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def _reap_children() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant, however detached."""
    for _ in range(5):
        victims = [pid, *_descendants(pid)]
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
        if not _descendants(pid):
            return


def _sweep_leftovers(grace: float) -> list[str]:
    """Kill what the last child left behind (reparented to us), after ``grace`` seconds.

    Returns the command lines of the processes that were still alive after the grace
    period (forkserver servers and resource trackers normally exit on their own when the
    child's end of their pipe closes).
    """
    me = os.getpid()
    deadline = time.monotonic() + grace
    while True:
        _reap_children()
        alive = _descendants(me)
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    leftovers = [f"{pid} {_cmdline(pid)}" for pid in alive]
    for _ in range(5):
        alive = _descendants(me)
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
        _reap_children()
    return leftovers


# ------------------------------------------------------------------ one job


def generic_id(test_id: str) -> str:
    """The test id without the start method: ProcessPoolSpawnXTest -> ProcessPoolXTest."""
    return MIXIN_PREFIX.sub("ProcessPool", test_id).replace("ProcessPoolProcessPool", "ProcessPool")


def _read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a line cut short by a kill
    except OSError:
        pass
    return events


def _stack_summary(dump: str, frames: int = 4) -> str:
    """Where the thread running the test was stuck, from a faulthandler dump.

    The innermost frames of the test's thread that are in the CPython test package or in
    safepool (threading and selectors frames left out), innermost first.
    """
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump.strip())
    main = next((b for b in blocks if "unittest/case.py" in b), blocks[0] if blocks else "")
    found, others = [], []
    for match in re.finditer(r'File "([^"]+)", line (\d+) in (\S+)', main):
        path, line, func = match.groups()
        if "/safepool/" in path:
            found.append(f"safepool/{path.split('/safepool/')[-1]}:{line} {func}")
        elif "test_concurrent_futures" in path:
            found.append(f"{Path(path).name}:{line} {func}")
        else:
            parent = Path(path).parent.name
            package = "" if parent == "lib" or parent.startswith("python") else f"{parent}/"
            others.append(f"{package}{Path(path).name}:{line} {func}")
    # No test or safepool frame (a module cleanup, interpreter exit): the innermost ones.
    return " <- ".join(found[:frames] or others[:frames]) or "(no frame)"


def _already_failed(details: list[str] | None) -> str:
    if not details:
        return ""
    return "; it had already failed: " + summarize({"outcome": "failed", "detail": details[0]})


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_job(
    python: str, label: str, module: str, method: str, opts: argparse.Namespace
) -> dict[str, Any]:
    """Run one module under one start method; returns its tests' records and notes."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cps-{label}-{module}-{method}-"))
    started_at = time.monotonic()
    deadline = started_at + opts.job_timeout
    plan: list[str] | None = None
    records: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    leftovers: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        events_path = workdir / f"events-{attempt}.jsonl"
        tb_path = workdir / f"traceback-{attempt}.txt"
        log_path = workdir / f"output-{attempt}.log"
        exclude_path = workdir / f"exclude-{attempt}.txt"
        exclude_path.write_text("".join(f"{tid}\n" for tid in records))
        cmd = [
            python, str(CHILD), "--module", module, "--start-method", method,
            "--events", str(events_path), "--traceback-file", str(tb_path),
            "--test-timeout", str(opts.test_timeout), "--exit-timeout", str(opts.exit_timeout),
            "--exclude", str(exclude_path),
        ]
        for pattern in opts.match:
            cmd += ["--match", pattern]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=_child_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            killed = False
            try:
                rc = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                killed = True
                _kill_tree(proc.pid)
                rc = proc.wait()
        # Whatever the child left behind is killed here, before anything else runs.
        _kill_tree(proc.pid)
        left = _sweep_leftovers(opts.leftover_grace)
        leftovers += [f"[attempt {attempt}] {line}" for line in left]

        events = _read_events(events_path)
        done = any(e["event"] == "done" for e in events)
        new_plan = next((e["tests"] for e in events if e["event"] == "plan"), None)
        if plan is None:
            plan = new_plan
        running = None
        progressed = False
        partial: dict[str, list[str]] = defaultdict(list)
        for event in events:
            if event["event"] == "start":
                running = event["id"]
            elif event["event"] == "partial":
                partial[event["id"]].append(event["detail"])
            elif event["event"] == "result":
                event = dict(event)
                del event["event"]
                if event.pop("fixture", False):
                    notes.append(f"fixture error {event['id']}: {event['outcome']}")
                    event["outcome"] = "errored"
                    if plan is not None and event["id"] not in plan:
                        plan.append(event["id"])
                event["attempt"] = attempt
                records[event["id"]] = event
                progressed = True
                if event["id"] == running:
                    running = None
        dump = tb_path.read_text(errors="replace") if tb_path.exists() else ""

        if plan is None:
            records[f"{module} ({method})"] = {
                "id": f"{module} ({method})", "outcome": "errored",
                "detail": f"the child process failed before listing the tests (exit code {rc})\n"
                + _tail(log_path),
            }
            break
        if killed:
            elapsed = time.monotonic() - started_at
            why = f"job wall-clock limit ({opts.job_timeout:.0f}s) reached after {elapsed:.0f}s"
            for tid in plan:
                if tid in records:
                    continue
                state = "running when the job was killed" if tid == running else "not reached"
                before = partial.get(tid)
                records[tid] = {
                    "id": tid, "outcome": "hung",
                    "detail": f"{why}; {state}" + _already_failed(before),
                    "failures_before_hang": before or [],
                }
            break
        if done:
            if rc != 0:
                # Counted as a hung pseudo-test: regrtest would time the module out.
                tid = f"{module}.<interpreter exit>"
                records[tid] = {
                    "id": tid, "outcome": "hung" if dump else "errored",
                    "detail": (f"interpreter exit took longer than {opts.exit_timeout:.0f}s; "
                               f"stack: {_stack_summary(dump)}" if dump else
                               f"the child exited with code {rc} after its tests\n"
                               + _tail(log_path)),
                    "traceback": dump, "attempt": attempt,
                }
            break
        # The child died before the end of the suite.
        if running is not None:
            if dump:
                before = partial.get(running)
                records[running] = {
                    "id": running, "outcome": "hung",
                    "detail": f"per-test timeout ({opts.test_timeout:.0f}s); stack: "
                    + _stack_summary(dump) + _already_failed(before),
                    "traceback": dump, "attempt": attempt,
                    "failures_before_hang": before or [],
                }
            else:
                records[running] = {
                    "id": running, "outcome": "errored",
                    "detail": f"the test process died (exit code {rc}) during this test\n"
                    + _tail(log_path), "attempt": attempt,
                }
            progressed = True
        else:
            # Between tests: setUpClass/setUpModule, or the class/module cleanups
            # (e.g. multiprocessing.util._cleanup_tests) after the last test of a class.
            last = next((e["id"] for e in reversed(events) if e["event"] == "result"), None)
            tid = f"{module}.<fixtures>"
            where = f"after {generic_id(last)}" if last else "before the first test"
            records[tid] = {
                "id": tid, "outcome": "hung" if dump else "errored",
                "detail": (f"per-test timeout ({opts.test_timeout:.0f}s) in class/module "
                           f"fixture code {where}; stack: {_stack_summary(dump)}" if dump else
                           f"the child exited with code {rc} in fixture code {where}\n"
                           + _tail(log_path)),
                "traceback": dump, "attempt": attempt,
            }
            progressed = True
        remaining = [tid for tid in plan if tid not in records]
        if not remaining:
            break
        if not progressed or time.monotonic() >= deadline:
            for tid in remaining:
                records[tid] = {
                    "id": tid, "outcome": "hung",
                    "detail": "not reached: the child kept dying without finishing a test",
                }
            break

    # The logs are kept only where something hung or died, for a closer look.
    keep = opts.keep_logs or leftovers or notes or any(
        r["outcome"] == "hung" or "died" in (r.get("detail") or "") for r in records.values()
    )
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    tests = []
    for tid in (plan or []) + [t for t in records if t not in (plan or [])]:
        record = records.get(tid, {"id": tid, "outcome": "hung", "detail": "no result"})
        record.setdefault("detail", "")
        record["module"] = module
        record["start_method"] = method
        record["generic_id"] = generic_id(tid)
        record["summary"] = summarize(record)
        tests.append(record)
    return {
        "module": module,
        "start_method": method,
        "duration": round(time.monotonic() - started_at, 1),
        "attempts": attempt,
        "notes": notes,
        "leftover_processes": leftovers,
        "workdir": str(workdir) if keep else None,
        "tests": tests,
    }


def summarize(record: dict[str, Any], max_lines: int = 2, width: int = 220) -> str:
    """The first lines of a test's error: its final exception, or the skip/hang reason."""
    detail = record.get("detail") or ""
    if record["outcome"] in ("skipped", "hung") or "Traceback" not in detail:
        first = detail.strip().splitlines()[:max_lines]
        return " | ".join(first)[:width]
    parts = []
    # Subtests: one exception per "[subtest ...]" block.
    for block in re.split(r"\n(?=\[subtest )", detail):
        sub = block.splitlines()[0] + " " if block.startswith("[subtest ") else ""
        lines = block.rstrip().splitlines()
        # The final exception message: the lines after the last indented (frame) line.
        last_frame = max((i for i, ln in enumerate(lines) if ln.startswith(" ")), default=-1)
        message = [ln for ln in lines[last_frame + 1:] if ln.strip()][:max_lines]
        parts.append(sub + " | ".join(message))
    unique = list(dict.fromkeys(parts))
    text = "; ".join(unique[:3]) + (f"; (+{len(unique) - 3} more)" if len(unique) > 3 else "")
    return text[:width]


# ------------------------------------------------------------------ reporting


def count(tests: list[dict[str, Any]]) -> Counter[str]:
    return Counter(t["outcome"] for t in tests)


def format_report(report: dict[str, Any], by_module: bool) -> str:
    out = []
    for label, run in report["versions"].items():
        if run.get("problem"):
            out.append(f"\n== Python {label}: not run: {run['problem']}")
            continue
        out.append(f"\n== Python {run['version']} ({run['python']}), {run['duration']:.0f}s")
        header = f"{'start method':<34}" + "".join(f"{o:>9}" for o in OUTCOMES) + f"{'total':>9}"
        out.append(header)
        out.append("-" * len(header))
        jobs = run["jobs"]
        for method in run["start_methods"]:
            method_tests = [t for j in jobs if j["start_method"] == method for t in j["tests"]]
            if by_module:
                for job in jobs:
                    if job["start_method"] == method:
                        c = count(job["tests"])
                        out.append(f"  {method + ' ' + job['module']:<32}"
                                   + "".join(f"{c[o]:>9}" for o in OUTCOMES)
                                   + f"{len(job['tests']):>9}")
            c = count(method_tests)
            out.append(f"{method:<34}" + "".join(f"{c[o]:>9}" for o in OUTCOMES)
                       + f"{len(method_tests):>9}")
        all_tests = [t for j in jobs for t in j["tests"]]
        c = count(all_tests)
        out.append("-" * len(header))
        out.append(f"{'all':<34}" + "".join(f"{c[o]:>9}" for o in OUTCOMES)
                   + f"{len(all_tests):>9}")

        groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for t in all_tests:
            if t["outcome"] in ("failed", "errored", "hung"):
                groups[(t["generic_id"], t["outcome"], t["summary"])].append(t["start_method"])
        if groups:
            out.append("\nNot passing (test [start methods] outcome: first lines of the error):")
            for (gid, outcome, summary), methods in sorted(groups.items()):
                out.append(f"  {gid} [{','.join(methods)}] {outcome}: {summary}")
        for job in jobs:
            for note in job["notes"]:
                out.append(f"  note {job['module']} {job['start_method']}: {note}")
            if job.get("workdir"):
                out.append(f"  logs {job['module']} {job['start_method']}: {job['workdir']}")
            if job["leftover_processes"]:
                out.append(f"  note {job['module']} {job['start_method']}: "
                           f"{len(job['leftover_processes'])} leftover process(es) killed: "
                           + "; ".join(job["leftover_processes"][:3]))
    return "\n".join(out)


# ---------------------------------------------------------------------- main


def _split(values: list[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run CPython's ProcessPoolExecutor tests against safepool.Executor.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("modules", nargs="*", help="test modules (default: all)")
    parser.add_argument("--python", action="append", default=[],
                        help="versions, interpreter paths or VERSION=PATH, comma-separated "
                        f"or repeated (default: {','.join(DEFAULT_VERSIONS)})")
    parser.add_argument("--modules", dest="module_opt", action="append", default=[],
                        help=f"comma-separated (default: {','.join(MODULES)})")
    parser.add_argument("--start-methods", action="append", default=[],
                        help=f"comma-separated (default: {','.join(START_METHODS)})")
    parser.add_argument("-k", "--match", action="append", default=[],
                        help="run only tests whose id contains this (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="write the full results here")
    parser.add_argument("--test-timeout", type=float, default=60.0,
                        help="seconds one test may run (default: %(default)s)")
    parser.add_argument("--job-timeout", type=float, default=300.0,
                        help="seconds one module under one start method may run "
                        "(default: %(default)s)")
    parser.add_argument("--exit-timeout", type=float, default=20.0,
                        help="seconds the child may take to exit after its tests "
                        "(default: %(default)s)")
    parser.add_argument("--leftover-grace", type=float, default=3.0,
                        help="seconds leftover processes get to exit on their own "
                        "(default: %(default)s)")
    parser.add_argument("--by-module", action="store_true", help="a table row per module")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep every job's directory (events, output, stacks) in the temp "
                        "directory; by default only those of jobs where something hung or died")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    opts = parser.parse_args(argv)

    versions = _split(opts.python) or DEFAULT_VERSIONS
    modules = _split(opts.modules + opts.module_opt) or MODULES
    methods = _split(opts.start_methods) or START_METHODS
    for m in modules:
        if m not in MODULES:
            parser.error(f"unknown module {m!r}; choose from {', '.join(MODULES)}")
    for m in methods:
        if m not in START_METHODS:
            parser.error(f"unknown start method {m!r}; choose from {', '.join(START_METHODS)}")

    if not _become_subreaper() and not opts.quiet:
        print("warning: could not become a child subreaper; processes that leave the "
              "child's session may outlive it", file=sys.stderr)

    report: dict[str, Any] = {"safepool": str(REPO), "versions": {}}
    status = 0
    for spec in versions:
        label, python, full, problem = resolve_interpreter(spec)
        if python is None:
            report["versions"][label] = {"problem": problem}
            print(f"Python {label}: not run: {problem}", file=sys.stderr)
            status = 2
            continue
        run: dict[str, Any] = {
            "python": python, "version": full, "start_methods": methods, "jobs": []
        }
        report["versions"][label] = run
        t0 = time.monotonic()
        for module in modules:
            for method in methods:
                job = run_job(python, label, module, method, opts)
                run["jobs"].append(job)
                if not opts.quiet:
                    c = count(job["tests"])
                    print(f"{full} {module} {method}: "
                          + (", ".join(f"{c[o]} {o}" for o in OUTCOMES if c[o])
                             or "no ProcessPool tests")
                          + f" ({job['duration']:.0f}s)", file=sys.stderr, flush=True)
        run["duration"] = round(time.monotonic() - t0, 1)
        run["totals"] = dict(count([t for j in run["jobs"] for t in j["tests"]]))
        if any(run["totals"].get(o) for o in ("failed", "errored", "hung")):
            status = max(status, 1)
        if opts.json:  # written after each interpreter, so a long run leaves partial results
            Path(opts.json).write_text(json.dumps(report, indent=1))

    print(format_report(report, opts.by_module))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
