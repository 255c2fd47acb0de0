"""Worker lifecycle: start workers on demand, make them idle, retire, kill and reap them.

A worker is STARTING until it reports ready, then IDLE or BUSY; RETIRING once
asked to exit (or exiting by itself), KILLING while signals stop it. When its
pidfd fires, ``_reap`` reads everything it sent, fails the task it died
running, queues again the ones that never started, and forgets it.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from multiprocessing import popen_fork as _popen_fork
from multiprocessing import resource_tracker
from multiprocessing.context import BaseContext

from safepool import _transport
from safepool._context import keep_global_start_method_unset, preload_in_forkserver
from safepool._errors import InitializerError, WorkerCrashedError, describe_exitcode
from safepool._local.deadlines import _EXIT_WAIT, _IDLE, _KILL, _START
from safepool._local.spawn import worker_context
from safepool._local.state import (
    BUSY,
    IDLE,
    KILLING,
    RETIRING,
    STARTING,
    PoolState,
    WorkItem,
    _set_exception,
    _Worker,
)
from safepool._logbridge import bridge_config
from safepool._marks import Marks
from safepool._pebble import start_process
from safepool._proctree import ProcessTree
from safepool._worker import worker_main

__all__ = ["Lifecycle"]

#: Workers that die before they are ready, in a row, before the pool gives up.
_MAX_BOOT_FAILURES = 3


def _block_sigint_for_children(context: BaseContext) -> None:
    """Block SIGINT in this thread so the processes it starts boot with SIGINT blocked.

    A Ctrl-C can then never hit a worker before it ignores SIGINT itself. The
    stdlib's resource tracker, which spawn and forkserver start on first use,
    unblocks SIGINT in the calling thread after starting itself, so it is
    started first.
    """
    if context.get_start_method() != "fork":
        resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class Lifecycle(PoolState):
    """The pool's worker-lifecycle part (manager thread only)."""

    def _start_workers(self) -> None:
        """Start workers on demand: as many as waiting work needs, up to max_workers.

        With resources or an initializer (which may hold connections), workers
        still exiting (retiring or being killed) count toward max_workers until
        they are gone, so there are never more worker processes, nor more of
        their connections, than max_workers allows. Without either, a worker
        that takes no more work (its last task before recycling is sent, or it
        is being killed) does not hold its place: its replacement starts at
        once, so recycling and timeouts cost no idle time; it takes work once
        its predecessor's last task is done (``_dispatch``). At most twice
        max_workers processes exist even then (plus the spares), and never more
        than max_workers tasks run at once.

        Spare workers (``spare_workers``) are started beyond what waiting work
        needs and kept ready, up to max_workers + spares processes taking work:
        a replacement is then already running when a worker goes.
        """
        waiting = len(self._pending) + len(self._retry) - len(self._idle)
        spares = 0 if self._shutdown else self._spares
        if waiting <= 0 and not spares:
            return
        starting = 0
        taking_work = 0  # workers that will run queued work: not exiting, not closing
        for w in self._workers.values():
            starting += w.state == STARTING
            taking_work += w.state in (STARTING, IDLE) or (w.state == BUSY and not w.closing)
        need = waiting + spares - starting
        if need <= 0:
            return
        if time.monotonic() < self._retry_at:
            return  # backing off after a resource setup failure; a _WAKE deadline is set
        cap = self.max_workers + spares
        if self._early_replacement:
            room = min(cap - taking_work, cap + self.max_workers - len(self._workers))
        else:
            room = cap - len(self._workers)
        for _ in range(min(need, room)):
            if not self._start_worker():
                return

    def _start_worker(self) -> bool:
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        inherited: list[int] = []
        if self.context.get_start_method() == "fork":
            inherited = [self._lifeline_w.fileno(), self._wake_r, self._wake_w,
                         parent_conn.fileno()]
        marks = Marks(1 + _transport.MARK_SLOTS)
        context = worker_context(self.context)
        worker_pipe: _transport.WorkerPipe = child_conn
        lifeline: _transport.WorkerPipe = self._lifeline_r
        if context is None:
            context = self.context
        else:  # the child gets bare pipes: it does not import multiprocessing for them
            worker_pipe = _transport.PipeEnd(child_conn.fileno())
            lifeline = _transport.PipeEnd(self._lifeline_r.fileno())
        try:
            preload_in_forkserver(self.context)
            _block_sigint_for_children(self.context)
            log_config = bridge_config(self._log_target) if self._logs is not None else None
            with keep_global_start_method_unset():
                process = start_process(
                    context, "safepool-worker", worker_main,
                    worker_pipe, lifeline, inherited,
                    self._initializer, self._initargs, self._max_memory,
                    self._resources, log_config, marks,
                )
        except Exception as exc:
            parent_conn.close()
            marks.sent()
            message = f"could not start a worker process: {type(exc).__name__}: {exc}"
            self._break(lambda: InitializerError(message), cause=exc)
            return False
        finally:
            child_conn.close()
        marks.sent()
        worker = _Worker(process, parent_conn, marks)
        self._workers[worker.sentinel] = worker
        self._selector.register(parent_conn.fileno(), selectors.EVENT_READ, (worker, True))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, (worker, False))
        self._push_deadline(time.monotonic() + self._start_timeout, _START, worker)
        return True

    def _want_a_spare(self) -> None:
        """A worker is being killed or crashed, or a task with a timeout (which may kill its
        worker) started: from now on keep one spare ready, if on demand."""
        if self._spare_on_demand and not self._shutdown:
            self._spare_on_demand = False
            self._spares = 1

    def _conn_lost(self, worker: _Worker) -> None:
        if not worker.conn_open:
            return
        worker.conn_open = False
        self._selector.unregister(worker.conn.fileno())
        if worker.state == IDLE:
            self._idle.remove(worker)
            worker.state = RETIRING

    def _make_idle(self, worker: _Worker) -> None:
        worker.state = IDLE
        worker.ready = True
        if worker.tasks or not self._spares:
            self._idle.append(worker)  # taken first (``_dispatch`` pops from the end)
        else:
            # A fresh worker goes last in line: work stays on the workers already in
            # use, and the newest stays the spare, until one of them goes.
            self._idle.insert(0, worker)
        if self._idle_timeout is not None:
            worker.idle_since = time.monotonic()
            if not worker.idle_armed:  # at most one _IDLE deadline per worker in the heap
                worker.idle_armed = True
                self._push_deadline(worker.idle_since + self._idle_timeout, _IDLE, worker)

    def _retire(self, worker: _Worker, within: float | None = None, tell: bool = True) -> None:
        """Ask a worker to exit cleanly (teardown runs); kill it if it takes longer than
        ``within`` seconds (default ``exit_timeout``). ``tell=False``: it is exiting
        already (EXIT is in its pipe, or it exits by itself)."""
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = RETIRING
        worker.planned = True
        if tell and not worker.closing and worker.conn_open:
            worker.closing = True
            try:
                _transport.write_all(worker.conn.fileno(), _transport.frame(_transport.EXIT))
            except OSError:
                self._conn_lost(worker)
        wait = self._exit_timeout if within is None else within
        self._push_deadline(time.monotonic() + wait, _EXIT_WAIT, worker)

    def _retire_idle_for_shutdown(self) -> None:
        if self._pending or self._retry:
            return
        for worker in list(self._workers.values()):
            if worker.state in (IDLE, STARTING):
                self._retire(worker)

    def _kill(self, worker: _Worker) -> None:
        """Stop a worker and its process tree: SIGTERM now, SIGKILL after the grace period."""
        self._want_a_spare()
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = KILLING
        worker.planned = True
        tree = ProcessTree(worker.pid)
        if self._kill_grace > 0:
            tree.signal(signal.SIGTERM)
            self._push_deadline(time.monotonic() + self._kill_grace, _KILL, tree)
        else:
            tree.signal(signal.SIGKILL)

    # ------------------------------------------------------------------ deaths

    def _reap(self, worker: _Worker) -> None:
        # Everything it wrote before dying is in the pipe: read it all first.
        while worker.conn_open and worker.conn.poll():
            self._receive(worker)
        _collect_exit(worker)
        exitcode = worker.process.exitcode
        if worker.ready and not worker.planned and not self._shutdown:
            self.counters.recycled["crash"] += 1
            self._want_a_spare()
        # The counter it shared says which of the tasks left in its pipe it had
        # started: that one was running when it died, the others never started.
        started = worker.marks[0]
        unstarted: list[WorkItem] = []
        for item in worker.inflight:
            if item.settled:
                continue
            if item.no > started and item.payload:
                unstarted.append(item)
            elif worker.killed_for is not None:  # it started just as the parent stopped it
                self.counters.stopped += 1
                why = (f"{worker.killed_for}; this task had just started on the same worker "
                       "when the worker was stopped")
                self._resolve(worker, _set_exception, item.future,
                              self._stopped(why, worker.pid))
            else:
                self.counters.crashed += 1
                self._resolve(worker, _set_exception, item.future,
                              WorkerCrashedError(worker.pid, exitcode))
        worker.inflight.clear()
        self._resend(unstarted)
        if worker.state == STARTING and not self._shutdown:
            self._boot_failures += 1
            self._last_boot_failure = f"worker pid {worker.pid} {describe_exitcode(exitcode)}"
            if self._boot_failures >= _MAX_BOOT_FAILURES:
                message = (
                    f"{self._boot_failures} workers in a row died while starting (last: "
                    f"{self._last_boot_failure}). Check that the main module can be imported "
                    "in a new process (guard the script's entry point with "
                    "`if __name__ == '__main__':`) and that the initializer does not crash"
                )
                self._break(lambda: InitializerError(message))
        self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        self._workers.pop(worker.sentinel, None)
        self._conn_lost(worker)
        self._selector.unregister(worker.sentinel)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.conn.close()
        worker.marks.close()
        if worker.sentinel != worker.process.sentinel:
            os.close(worker.sentinel)
        # Release the process's fds now, but leave the Process object usable
        # (join(), exitcode, is_alive()) for code that kept it from the _processes
        # view, as the stdlib's are: Process.close() would make them raise.
        popen = getattr(worker.process, "_popen", None)
        if popen is not None and popen.poll() is not None:
            popen.close()


def _collect_exit(worker: _Worker) -> None:
    """Reap an exited worker without racing a user's ``join()`` of the same process.

    Two threads reaping one child is a race in multiprocessing: the loser's
    ``waitpid`` fails with ECHILD and its ``Process`` reports the dead worker as
    alive with no exit code. So where the worker is our own child and we hold
    its pidfd, the exit code is read without reaping (``WNOWAIT``) and recorded
    on the ``Process`` first; a concurrent ``join()`` then sees it, and only
    after that is the child reaped, through the pidfd, which cannot name a
    reused pid. Elsewhere (forkserver, whose workers are not our children, or
    no pidfds) multiprocessing's own ``join`` does it.
    """
    process = worker.process
    popen = getattr(process, "_popen", None)
    if (
        popen is None
        or type(popen).poll is not _popen_fork.Popen.poll
        or worker.sentinel == process.sentinel
    ):
        process.join(1.0)
        return
    try:
        if popen.returncode is None:
            info = os.waitid(os.P_PIDFD, worker.sentinel, os.WEXITED | os.WNOWAIT)
            if info is not None:
                dead_by_signal = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
                popen.returncode = -info.si_status if dead_by_signal else info.si_status
        os.waitid(os.P_PIDFD, worker.sentinel, os.WEXITED)
    except ChildProcessError:
        # A user's join() reaped it first and is about to record its code (it needs
        # the GIL for that): let it, so that _forget() sees the worker as exited and
        # releases its fds now.
        deadline = time.monotonic() + 1.0
        while popen.returncode is None and time.monotonic() < deadline:
            time.sleep(0.0005)
