"""The code that runs inside a worker process.

A worker:

1. makes itself quiet and killable as a unit: it ignores SIGINT (it was
   started with SIGINT blocked, so a Ctrl-C during start-up is never
   delivered), restores the default SIGTERM action, and becomes the leader of
   its own session, so the terminal's Ctrl-C does not reach it or its children
   and the parent can signal the whole group at once;
2. forwards its log records to the parent (``_logbridge``), unless the
   executor was made with ``worker_logs=False``, from when logging is first
   imported (a worker whose tasks never log never imports it);
3. watches a *lifeline* pipe on a small thread: the parent never writes to it,
   so EOF means the parent died, and the worker kills its process tree and
   exits at once, even in the middle of a task;
4. runs the stdlib-style ``initializer`` and sets up its resources (in
   dependency order), then says READY;
5. loops: read a task; skip it (reply SKIPPED) if the parent marked its
   number as stopped in the shared ``marks`` array while it waited in the
   pipe; else note its number in ``marks[0]`` (so the parent knows, even
   after killing this process, which of the tasks waiting in the pipe had
   started) and run it between the resources' ``before``
   and ``after`` hooks, send exactly one reply; an empty message (or EOF) ends
   the loop, the resources are torn down and the worker exits normally. So
   does a task that poisoned the worker or left it above the memory limit:
   the worker exits right after that task's reply and reads no other task.

Everything the worker sends goes through one lock, since the logging bridge
may send from any of the task's threads while the main thread replies.
"""

from __future__ import annotations

# The C module that ``signal`` wraps in enums: ``signal`` imports ``enum``, about a
# tenth of a spawned worker's start, for names this module never shows anyone.
import _signal as signal  # type: ignore[import-not-found]  # no stub: a C module
import os

# Loaded here so that a forkserver that preloads this module has it ready for
# every worker it forks: multiprocessing re-runs the main script through runpy.
import runpy  # noqa: F401
import threading
import time

from safepool import _transport
from safepool._importhooks import after_import
from safepool._marks import Marks
from safepool._resource_runtime import WorkerResources, enter_worker, take_poison

# Only what every task needs is imported at the top: under spawn, each import
# is paid again by every new worker (``typing`` alone adds about 10% to a
# worker's start), so ``traceback`` waits for the first error.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import ModuleType
    from typing import Any

    from safepool._resources import Resource
    from safepool._transport import BridgeConfig, WorkerPipe

__all__ = ["worker_main"]


def _quiet_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent's SIGTERM handler inherited through fork must not run here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _own_session() -> None:
    try:
        os.setsid()
    except OSError:  # already a process-group leader
        pass


def _kill_own_tree() -> None:
    """Kill every process this worker started, then the worker itself."""
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
    finally:
        try:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        finally:
            os._exit(1)


class _Sender:
    """Sends whole messages to the parent, one thread at a time.

    Each is framed as ``Connection.send_bytes`` frames it and written straight to
    the pipe's descriptor: one system call for a small message, and none of a
    ``Connection``'s checks and copies (a reply is sent for every task)."""

    def __init__(self, conn: WorkerPipe) -> None:
        self._conn = conn  # kept: it owns the descriptor
        self._fd = conn.fileno()
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self._lock:
            if len(data) <= _SEND_WHOLE:
                _transport.write_all(self._fd, _transport.frame(data))
            else:  # the header on its own: a big message is not copied to go behind it
                _transport.write_all(self._fd, _transport.frame_header(len(data)))
                _transport.write_all(self._fd, data)


#: Messages up to this size are copied behind their header and written in one call.
_SEND_WHOLE = 16 * 1024


def _forward_logs(send: Callable[[bytes], None], config: BridgeConfig) -> None:
    """Forward log records to the parent, from when logging is imported (now, if it is).

    Until a task or a library imports logging nothing can be logged, so a
    worker that never logs never pays for importing it.
    """

    def install(_logging: ModuleType) -> None:
        from safepool._logbridge import install_bridge

        install_bridge(send, config)

    after_import("logging", install)


def _watch_lifeline(lifeline: WorkerPipe) -> None:
    def watch() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        _kill_own_tree()

    threading.Thread(target=watch, name="safepool-lifeline", daemon=True).start()


def worker_main(
    conn: WorkerPipe,
    lifeline: WorkerPipe,
    inherited_fds: Iterable[int],
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_memory: int | None,
    resources: tuple[Resource[Any], ...] = (),
    log_config: BridgeConfig | None = None,
    marks: Marks | None = None,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``Process``)."""
    _quiet_signals()
    enter_worker()
    _own_session()
    for fd in inherited_fds:  # fork only: the parent's end of the lifeline
        try:
            os.close(fd)
        except OSError:
            pass
    send = _Sender(conn)
    if log_config is not None:
        _forward_logs(send, log_config)
    _watch_lifeline(lifeline)

    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            send(_transport.encode_error(exc, kind=_transport.INIT_ERR))
            return
    runtime = WorkerResources(resources) if resources else None
    if runtime is not None:
        try:
            runtime.setup()
        except BaseException as exc:
            name = getattr(exc, "safepool_resource", None)
            send(_transport.encode_error(exc, kind=_transport.SETUP_ERR, note=name))
            return
    send(_transport.message(_transport.READY))
    try:
        _serve(conn, send, runtime, max_memory, marks)
    finally:
        if runtime is not None:
            runtime.teardown()


def _serve(
    conn: WorkerPipe,
    send: Callable[[bytes], None],
    runtime: WorkerResources | None,
    max_memory: int | None,
    marks: Marks | None,
) -> None:
    """Run tasks until the parent sends EXIT or goes away, or this worker must be recycled."""
    rss_of: Callable[[], int] = lambda: 0  # noqa: E731
    if max_memory is not None:
        import psutil

        me = psutil.Process()
        rss_of = lambda: me.memory_info().rss  # noqa: E731

    reader = _transport.FrameReader(conn.fileno())
    skipped = _transport.message(_transport.SKIPPED)
    slots = _transport.MARK_SLOTS
    # The marks' words themselves, indexed directly: Marks' own methods are a Python
    # call each, twice per task.
    words = marks.words if marks is not None else None
    number = 0
    while True:
        try:
            data = reader.next()
        except OSError:
            return
        if not data:  # EXIT, or EOF: the parent is gone
            return
        number += 1
        if words is not None:
            if words[1 + number % slots] == number:  # stopped while it waited
                send(skipped)
                continue
            words[0] = number  # before anything of the task runs
        reply, rss, poison = _run_task(data, rss_of, runtime)
        send(reply)
        if poison is not None or (max_memory is not None and rss > max_memory):
            return  # the parent saw why in the reply; tasks behind this one never start


def _note(exc: BaseException, text: str) -> None:
    """Add a note to ``exc`` (3.11+), shown in its traceback; nothing on 3.10."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        try:
            add_note(text)
        except Exception:  # pragma: no cover - an exception type that refuses notes
            pass


def _run_task(
    data: bytes, rss_of: Callable[[], int], runtime: WorkerResources | None
) -> tuple[bytes, int, str | None]:
    """Run one task; its reply, the worker's RSS after it, and why it poisoned the worker.

    Whatever the task, its arguments or its result raise, even ``SystemExit``
    while they are unpickled or pickled, becomes this task's reply: nothing a
    task sends can end the worker's loop.
    """
    began = time.perf_counter()
    try:
        try:
            fn, args, kwargs = _transport.load_call(data)
        except BaseException as exc:
            _note(exc, "raised while the worker unpickled the task's function and arguments")
            raise
        if runtime is not None:
            runtime.before_task()
        result = fn(*args, **kwargs)
    except BaseException as exc:
        if runtime is not None:
            runtime.after_task(exception=exc)
        tb = exc.__traceback__
        # Start the child traceback at the task's own frame, not at this one.
        try:
            import traceback

            tb_text = "".join(
                traceback.format_exception(type(exc), exc, tb.tb_next if tb else None)
            )
        except BaseException:  # a __str__ that raises: encode_error says so
            tb_text = None
        rss, poison = rss_of(), take_poison()
        seconds = time.perf_counter() - began
        reply = _transport.encode_error(exc, rss=rss, seconds=seconds, note=poison,
                                        tb_text=tb_text)
        return reply, rss, poison
    if runtime is not None:
        runtime.after_task(result=result)
    rss, poison = rss_of(), take_poison()
    seconds = time.perf_counter() - began
    return _transport.encode_result(result, rss=rss, seconds=seconds, note=poison), rss, poison
