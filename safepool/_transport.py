"""What crosses the pipes between the parent and a worker, and how it is checked.

Messages are framed as ``multiprocessing.connection.Connection`` frames them
(a 4-byte big-endian length, then the bytes), so either end may use a
``Connection`` or the buffered [`FrameReader`][] and [`frame`][] below, which
read many messages with one system call and write many with one.

Parent -> worker: one message per task, the pickled ``(fn, args, kwargs)``
made by ``dumps_call()`` in the thread that called ``submit``; an empty
message asks the worker to exit. A [`CallPickler`][] sends a plain top-level
function by reference instead (``safepool._fnref``): ``F``, the reference's
length (2 bytes) and the reference, then the pickled ``(args, kwargs)``; a
``map`` chunk whose function goes by reference starts with ``C`` (a chunk of
argument tuples, for [`run_chunk`][]) or ``S`` (of single arguments, for
[`run_chunk_single`][]), then the same reference, then the pickled chunk. A
call with big ``bytes`` arguments starts with ``B`` ([`OutOfBandCall`][]);
a plain pickle starts with its protocol opcode (0x80). Several tasks may wait in a worker's pipe
(prefetch, see ``_local.dispatch``); the worker runs them strictly in order.

Worker -> parent: one message per event. Each starts with a fixed header,
``kind`` (one byte), then ``rss``, ``seconds`` and a UTF-8 ``note`` (see
[`message`][]), and a pickled body follows. The header is outside the pickle
so that a body the parent cannot unpickle (a result whose class raises, even
``SystemExit``, while it is rebuilt) still says which task it answers and
whether the worker is about to exit: it fails that one future, and nothing
else.

* ``READY`` (no body) once the worker has started and its initializer succeeded;
* ``OK``, body the pickled result, after a task returned;
* ``ERR``, body ``(exc_bytes, type_name, message, traceback_text)``, after a
  task raised; ``exc_bytes`` is pickled separately so the parent can fall
  back to a [`RemoteError`][safepool.RemoteError] if it cannot rebuild the
  exception. For both, ``rss`` is the worker's memory after the task (0 when
  not measured), ``seconds`` how long the task ran, and ``note`` why the
  worker must be recycled (it then exits after this reply without reading
  another task), or empty;
* ``SKIPPED`` (no body) for a task the parent stopped while it waited in the
  pipe (the parent marked its number in the shared ``marks``, see ``_worker``);
* ``INIT_ERR`` when the initializer failed, and ``SETUP_ERR`` (``note``: the
  resource's name) when a resource's setup failed, with ``ERR``'s body;
* ``LOG``, body a log record's dict, for each record the worker's logging
  bridge forwards (``_logbridge``), at any time, in the order they were
  logged, so a task's records always come before its reply.

Every task gets exactly one reply, so a reply that cannot be decoded fails only
that task's future and never desynchronises the pipe.
"""

from __future__ import annotations

# The C pickler, which is what ``pickle`` exports on CPython: importing ``pickle``
# itself also imports ``re`` and ``enum``, about a tenth of a spawned worker's start.
import _pickle as pickle
import copyreg
import io
import os
import struct
import sys
import threading
from collections import deque

from safepool import _fnref

# The error types and the pickling diagnostics (``_errors``, ``_pickling``), and
# traceback, are imported where they are needed, not here: a worker imports this
# module on its way to running its first task, and those are for when something
# fails. Neither is typing (about 10% of a spawned worker's start).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Protocol

    from safepool._errors import PicklingError

__all__ = [
    "ERR",
    "EXIT",
    "FRAME_LENGTH",
    "INIT_ERR",
    "LOG",
    "MARK_SLOTS",
    "OK",
    "READY",
    "SETUP_ERR",
    "SKIPPED",
    "BridgeConfig",
    "CallPickler",
    "DeferredCall",
    "FrameReader",
    "Message",
    "OutOfBandCall",
    "Payload",
    "PipeEnd",
    "SplitChunk",
    "check_initargs",
    "decode_error",
    "describe_error",
    "dumps_call",
    "encode_error",
    "encode_result",
    "frame",
    "frame_header",
    "load_call",
    "message",
    "parse",
    "pickle_call",
    "run_chunk",
    "run_chunk_single",
    "unloadable_result",
    "write_all",
]

READY, OK, ERR, INIT_ERR, SETUP_ERR, LOG, SKIPPED = 0, 1, 2, 3, 4, 5, 6
#: Slots for stopped-task marks in the array a worker shares with the parent
#: (slot 0 holds the number of the task it started last).
MARK_SLOTS = 64
#: The message that asks a worker to run its teardown and exit.
EXIT = b""

_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL (tests/test_spawn_bootstrap.py checks)
#: What to do about a result that cannot cross back to the parent.
_RESULT_HINT = "Return plain data (numbers, strings, lists, dicts, dataclasses) from tasks"


#: kind, rss, seconds, length of the note that follows (see the module docstring).
_HEADER = struct.Struct("!BQdH")
_NOTE_MAX = 0xFFFF

_LENGTH = struct.Struct("!i")
#: The length prefix of a frame (a payload of at most 2 GiB - 1).
FRAME_LENGTH = _LENGTH
_LONG_LENGTH = struct.Struct("!Q")
#: Bytes asked of the OS per read; a longer message is read in one go once its length is known.
_READ_SIZE = 1 << 18


#: A ``bytes`` argument of a call at least this big travels out of band (see OutOfBandCall).
OOB_MIN = 64 * 1024
#: The first byte of a call with out-of-band buffers (a plain pickle starts with 0x80).
_OOB = b"B"
_COUNT = struct.Struct("!I")
#: The first byte of a call whose function went by reference (``safepool._fnref``):
#: then the reference's length, the reference, and the pickled ``(args, kwargs)``.
_BY_REF = b"F"
#: The first byte of a ``map`` chunk whose function went by reference: the same layout,
#: with the pickled chunk of argument tuples (or of single arguments) after the reference.
_CHUNK = b"C"
_CHUNK_SINGLE = b"S"
_REF_LENGTH = struct.Struct("!H")
_REF_START = 1 + _REF_LENGTH.size


def _ref_header(ref: bytes) -> bytes | None:
    """What goes before the arguments of a call to the function ``ref`` names."""
    if len(ref) > 0xFFFF:
        return None
    return _BY_REF + _REF_LENGTH.pack(len(ref)) + ref


class OutOfBandCall:
    """A pickled call whose big ``bytes`` arguments are held by reference, not copied in.

    Pickle protocol 5 (PEP 574) leaves each such argument out of the pickle
    stream; the parent keeps a view of the caller's own object until the call
    is sent, so a queue of calls with 1 MiB arguments does not hold a pickled
    copy of each. On the wire the buffers follow the stream (``wire()``), and
    the worker hands them back to the unpickler (``load_call``): the task gets
    ``bytes``, as it would from a plain pickle.
    """

    __slots__ = ("buffers", "size", "stream")

    def __init__(self, stream: bytes, buffers: list[memoryview]) -> None:
        self.stream = stream
        self.buffers = buffers
        self.size = len(stream) + sum(b.nbytes for b in buffers)

    def __len__(self) -> int:
        return self.size

    def parts(self) -> list[Any]:
        """What goes on the wire, in order: a header, the stream, the buffers."""
        lengths = [_COUNT.pack(len(self.buffers)), _LONG_LENGTH.pack(len(self.stream))]
        lengths += [_LONG_LENGTH.pack(b.nbytes) for b in self.buffers]
        return [_OOB, *lengths, self.stream, *self.buffers]

    def wire(self) -> bytes:
        return b"".join(self.parts())


#: A pickled call as the executor hands it to an engine.
Payload = bytes | OutOfBandCall


def run_chunk(fn: Callable[..., Any], chunk: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``fn`` over a chunk of argument tuples (``map`` with ``chunksize > 1``)."""
    return [fn(*args) for args in chunk]


def run_chunk_single(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    """Run ``fn`` over a chunk of single arguments (``map`` over one iterable): the
    arguments themselves pickle smaller and faster than a tuple of 1-tuples."""
    return [fn(arg) for arg in chunk]


#: What runs a chunk that went by reference, by its first byte; and that byte, by runner.
_CHUNK_RUNNERS: dict[bytes, Callable[..., list[Any]]] = {
    _CHUNK: run_chunk, _CHUNK_SINGLE: run_chunk_single,
}
_CHUNK_MARKS = {runner: mark for mark, runner in _CHUNK_RUNNERS.items()}


def load_call(data: bytes) -> Any:
    """Unpickle a call made by ``dumps_call`` or a ``CallPickler``, in a worker."""
    first = data[:1]
    by_ref = first == _BY_REF
    runner = None if by_ref else _CHUNK_RUNNERS.get(first)
    if by_ref or runner is not None:
        (size,) = _REF_LENGTH.unpack_from(data, 1)
        end = _REF_START + size
        fn = _fnref.function(data[_REF_START:end])  # first, as a plain pickle finds it
        rest = pickle.loads(memoryview(data)[end:])
        if runner is not None:  # a map chunk: rest is its calls
            return runner, (fn, rest), {}
        args, kwargs = rest
        return fn, args, kwargs
    if first != _OOB:
        return pickle.loads(data)
    (count,) = _COUNT.unpack_from(data, 1)
    pos = 1 + _COUNT.size
    sizes = [_LONG_LENGTH.unpack_from(data, pos + 8 * i)[0] for i in range(count + 1)]
    pos += 8 * (count + 1)
    view = memoryview(data)
    stream = view[pos:pos + sizes[0]]
    pos += sizes[0]
    buffers = []
    for size in sizes[1:]:
        buffers.append(bytes(view[pos:pos + size]))  # bytes, as the caller passed
        pos += size
    return pickle.loads(stream, buffers=buffers)


def frame_header(size: int) -> bytes:
    """The length prefix ``Connection.send_bytes`` puts in front of ``size`` bytes."""
    if size > 0x7FFFFFFF:
        return _LENGTH.pack(-1) + _LONG_LENGTH.pack(size)
    return _LENGTH.pack(size)


def frame(data: Payload) -> bytes:
    """``data`` framed as ``Connection.send_bytes`` frames it."""
    if isinstance(data, OutOfBandCall):
        parts = data.parts()
        return b"".join([frame_header(sum(len(p) for p in parts)), *parts])
    size = len(data)
    if size > 0x7FFFFFFF:
        return frame_header(size) + data
    return _LENGTH.pack(size) + data  # (frame_header, inlined: one frame per task)


def message(
    kind: int, body: bytes = b"", *, rss: int = 0, seconds: float = 0.0, note: str | None = None
) -> bytes:
    """A worker-to-parent message: the header, then ``body`` (already pickled)."""
    noted = note.encode("utf-8", "replace")[:_NOTE_MAX] if note else b""
    return _HEADER.pack(kind, max(rss, 0), seconds, len(noted)) + noted + body


#: A worker-to-parent message as [`parse`][] splits it: kind, rss, seconds, note, and
#: the body, still pickled (a plain tuple: one is parsed per reply).
Message = tuple[int, int, float, "str | None", memoryview]


def parse(data: bytes) -> Message:
    """Split a message made by [`message`][] without unpickling its body."""
    kind, rss, seconds, size = _HEADER.unpack_from(data)
    start = _HEADER.size + size
    note = data[_HEADER.size:start].decode("utf-8", "replace") if size else None
    return kind, rss, seconds, note, memoryview(data)[start:]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking ``fd`` (``OSError`` if the other end is gone)."""
    written = os.write(fd, data)
    if written < len(data):  # a pipe takes a small message whole: the rest is rarely needed
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


class FrameReader:
    """Reads framed messages from a file descriptor, as many per system call as are waiting."""

    __slots__ = ("_buf", "_fd", "_need", "_ready")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._need = 0  # bytes the message being read still lacks, when known
        self._ready: deque[bytes] = deque()  # taken, not yet returned by next()

    def fill(self) -> bool:
        """One ``read`` of what is waiting (blocks if nothing is); False at EOF."""
        data = os.read(self._fd, max(_READ_SIZE, self._need))
        if not data:
            return False
        self._buf += data
        return True

    def take(self) -> list[bytes]:
        """Every complete message in the buffer, in order."""
        buf, pos, out = self._buf, 0, []
        end = len(buf)
        view = memoryview(buf)  # slices of it are copied once, straight into bytes
        try:
            while end - pos >= 4:
                (size,) = _LENGTH.unpack_from(buf, pos)
                start = pos + 4
                if size == -1:
                    if end - start < 8:
                        break
                    (size,) = _LONG_LENGTH.unpack_from(buf, start)
                    start += 8
                if end - start < size:
                    self._need = start + size - end
                    break
                out.append(bytes(view[start:start + size]))
                pos = start + size
            else:
                self._need = 0
        finally:
            view.release()  # before the buffer is resized
        if pos:
            del buf[:pos]
        return out

    def next(self) -> bytes | None:
        """The next message, reading as needed; None at EOF."""
        while not self._ready:
            if not self.fill():
                return None
            self._ready.extend(self.take())
        return self._ready.popleft()



class BridgeConfig:
    """What a worker needs to forward the records the parent wants (``_logbridge``).

    It is here, not in ``_logbridge``, so that a worker unpickles it without
    importing logging, which it imports only if a task uses it.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, which
    would add milliseconds to every worker's start under spawn.
    """

    __slots__ = ("disable", "levels", "root_level")

    def __init__(
        self, root_level: int, levels: dict[str, int] | None = None,
        disable: int = 0,  # logging.NOTSET
    ) -> None:
        self.root_level = root_level
        self.levels: dict[str, int] = levels if levels is not None else {}
        self.disable = disable

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BridgeConfig):
            return NotImplemented
        return (self.root_level, self.levels, self.disable) == (
            other.root_level, other.levels, other.disable)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"BridgeConfig(root_level={self.root_level!r}, levels={self.levels!r}, "
                f"disable={self.disable!r})")


if TYPE_CHECKING:
    class WorkerPipe(Protocol):
        """What a worker needs of its end of a pipe: a ``Connection``, or a [`PipeEnd`][]."""

        def fileno(self) -> int: ...
        def send_bytes(self, data: bytes) -> None: ...
        def recv_bytes(self) -> bytes: ...


class PipeEnd:
    """A worker's end of a pipe as a bare descriptor, with a ``Connection``'s framing.

    Under safepool's own spawn (``_spawnchild``) a worker gets these instead of
    ``Connection`` objects, which would import ``multiprocessing.connection``
    (and most of multiprocessing) in the new process. In the parent it wraps
    the descriptor of a ``Connection`` it does not own, to send it.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd  # the parent's side only

        return (_pipe_end, (DupFd(self._fd),))

    def fileno(self) -> int:
        return self._fd

    def send_bytes(self, data: bytes) -> None:
        write_all(self._fd, frame(data))

    def recv_bytes(self) -> bytes:
        """The next message (blocking); ``EOFError`` once the other end is closed.
        It reads no further than the message's end."""
        (size,) = _LENGTH.unpack(self._read(4))
        if size == -1:
            (size,) = _LONG_LENGTH.unpack(self._read(8))
        return self._read(size)

    def _read(self, size: int) -> bytes:
        parts, left = [], size
        while left:
            data = os.read(self._fd, left)
            if not data:
                raise EOFError
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


def _pipe_end(passed: Any) -> PipeEnd:
    return PipeEnd(passed.detach())

_table: dict[Any, Any] = {}
#: Copies of the registries ``_table`` was made of: copyreg's, then ``ForkingPickler``'s.
_seen: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
#: The registries themselves, once ``multiprocessing.reduction`` is imported. Both
#: are changed in place (``copyreg.pickle``, ``ForkingPickler.register``), so they
#: are looked up once, not at every call.
_live: tuple[dict[Any, Any], dict[Any, Any]] | None = None


def _dispatch_table() -> dict[Any, Any]:
    """copyreg's reducers merged with ``ForkingPickler``'s (connections, sockets, ...).

    ``ForkingPickler.dumps`` copies copyreg's dispatch table on every call,
    which is most of its cost for a small call; the merged table is kept here
    and rebuilt when either registry changes (a reducer added, or replaced:
    the comparison is by identity first, a fraction of a microsecond).
    """
    global _table, _seen
    live, seen = _live or _registries(), _seen
    if seen[0] != live[0] or seen[1] != live[1]:
        # One copy of each, for the table and for the comparison: a reducer registered
        # by another thread meanwhile is then either in both or noticed next time.
        registered, forking = dict(live[0]), dict(live[1])
        _table, _seen = {**registered, **forking}, (registered, forking)
    return _table


def _registries() -> tuple[dict[Any, Any], dict[Any, Any]]:
    """copyreg's registry and ``ForkingPickler``'s (kept once it exists)."""
    global _live
    # multiprocessing's reducers exist once it is imported: a worker started by
    # safepool's own spawn imports it only if a task uses it (``_spawnchild``).
    reduction = sys.modules.get("multiprocessing.reduction")
    if reduction is None:
        return copyreg.dispatch_table, {}
    _live = copyreg.dispatch_table, getattr(reduction.ForkingPickler, "_extra_reducers", {})
    return _live


def _dumps(obj: Any) -> bytes:
    """Pickle as ``ForkingPickler`` does."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, _PROTOCOL)
    pickler.dispatch_table = _dispatch_table()
    pickler.dump(obj)
    return buf.getvalue()


def _dumps_out_of_band(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> OutOfBandCall:
    def wrap(value: Any) -> Any:
        if type(value) is bytes and len(value) >= OOB_MIN:
            return pickle.PickleBuffer(value)
        return value

    call = (fn, tuple(wrap(a) for a in args), {k: wrap(v) for k, v in kwargs.items()})
    buffers: list[memoryview] = []
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, 5, buffer_callback=lambda b: buffers.append(b.raw()))
    pickler.dispatch_table = _dispatch_table()
    pickler.dump(call)
    return OutOfBandCall(buf.getvalue(), buffers)


def _diagnose(
    parts: list[tuple[str, Any]],
    dumps: Callable[[Any], object] | None = None,
    *,
    returning: bool = False,
) -> PicklingError | None:
    """Name the innermost thing in ``parts`` that cannot be pickled, with advice.

    ``parts`` are ``(root, object)`` pairs, searched in order; ``None`` if each
    part pickles on its own. ``dumps`` defaults to multiprocessing's pickler.
    """
    from safepool import _pickling
    from safepool._errors import PicklingError

    for root, obj in parts:
        culprit = _pickling.find_unpicklable(obj, root, dumps or _pickling.forking_dumps)
        if culprit is not None:
            hint = _pickling.hint_for(culprit, returning=returning)
            return PicklingError(culprit.path, culprit.type_name, culprit.reason, hint)
    return None


def _has_big_bytes(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether an argument is ``bytes`` big enough to go out of band (``OOB_MIN``)."""
    for value in args:
        if type(value) is bytes and len(value) >= OOB_MIN:
            return True
    if kwargs:
        for value in kwargs.values():  # (loops: no generator made per call)
            if type(value) is bytes and len(value) >= OOB_MIN:
                return True
    return False


def dumps_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    fn_name: str = "fn",
) -> Payload:
    """Pickle a call for a worker (``fn_name``: how paths name ``fn``).

    A ``bytes`` argument of at least ``OOB_MIN`` bytes is not copied into the
    pickle: the result is then an [`OutOfBandCall`][] that refers to it.

    Raises [`PicklingError`][safepool.PicklingError] naming the path to the
    innermost object that cannot be pickled (``args[0].engine.pool._lock``),
    its type, and what to do about it, whatever pickling raised (even a
    ``SystemExit`` from a ``__reduce__``) but ``KeyboardInterrupt``, which is
    let through in the main thread, where it may be a real Ctrl-C (elsewhere
    it is a failure to pickle like any other: ``_pickling.may_be_ctrl_c``).
    """
    try:
        if _has_big_bytes(args, kwargs):
            return _dumps_out_of_band(fn, args, kwargs)
        return _dumps((fn, args, kwargs))
    except BaseException as exc:  # even SystemExit, from an argument's __reduce__
        from safepool import _pickling

        if _pickling.may_be_ctrl_c(exc):
            raise  # never turned into an error
        from safepool._errors import PicklingError

        parts: list[tuple[str, Any]] = [(fn_name, fn)]
        parts += [(f"args[{i}]", a) for i, a in enumerate(args)]
        parts += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
        error = _diagnose(parts) or PicklingError(
            "the call", _pickling.type_name(fn), _pickling.reason_of(exc)
        )
        raise error from exc


class DeferredCall:
    """A call to pickle in the manager thread, as the stdlib's feeder thread does.

    ``chunk``: it is a whole ``map`` chunk, ``fn(user_fn, calls)``; if it cannot
    be pickled as a whole, the manager sends its calls one by one instead, so
    that only the call that cannot be pickled fails (see [`SplitChunk`][]).
    ``single``: each of those calls is one argument, not a tuple of them.
    """

    __slots__ = ("args", "chunk", "fn", "kwargs", "single")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 chunk: bool, single: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.chunk = chunk
        self.single = single


class SplitChunk:
    """The result of a ``map`` chunk that could not be pickled as a whole (internal).

    The manager thread queued its calls one by one instead, ahead of the rest:
    ``futures`` are theirs, in order, and each resolves to its call's own
    result or error, so only the call that cannot be pickled fails. The map's
    iterator hands them out in the chunk's place.
    """

    __slots__ = ("futures",)

    def __init__(self, futures: list[Any]) -> None:
        self.futures = futures


#: A CallPickler is made anew after a call pickled bigger than this (see ``dumps``).
_KEEP_PICKLER_BELOW = 1024


class CallPickler:
    """Pickles calls one after another with one reused pickler, for one thread only
    (each calling thread has its own, through [`pickle_call`][]; the manager its own).

    Making a pickler is most of the cost of pickling a small call: this one is
    made once, and cleared between calls. So is the reference of a plain
    top-level function, which is the other part of it (``safepool._fnref``):
    the call then goes as that reference followed by the pickled arguments.
    Otherwise the result is what [`dumps_call`][] gives, which it falls back
    to for a call with big ``bytes`` arguments (out of band) and for a call
    that cannot be pickled (to name what cannot).
    """

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._pickler: pickle.Pickler | None = None
        self._table: dict[Any, Any] | None = None
        self._busy = False  # a __reduce__ that submits pickles its call while this one is
        self._refs = _fnref.References(_ref_header)

    def refresh(self) -> None:
        """Take up reducers registered since the last call (``copyreg``, ``ForkingPickler``).
        Called once per round of calls rather than for each."""
        if _dispatch_table() is not self._table:
            self._pickler = None

    def dumps(self, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> Payload:
        if self._busy or _has_big_bytes(args, kwargs):
            return dumps_call(fn, args, kwargs)
        return self._dump(fn, args, kwargs, None)

    def dumps_chunk(self, runner: Callable[..., Any], args: tuple[Any, ...]) -> Payload:
        """A ``map`` chunk, ``runner(fn, calls)`` (``run_chunk`` or ``run_chunk_single``):
        as ``dumps`` would pickle it, or, if ``fn`` goes by reference, as that reference
        followed by the pickled ``calls`` (the runner named by the first byte), so that
        ``fn`` is not looked up by name again at each end for every chunk."""
        if self._busy:
            return dumps_call(runner, args, {})
        return self._dump(runner, args, {}, _CHUNK_MARKS.get(runner))

    def _dump(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
              chunk: bytes | None) -> Payload:
        pickler = self._pickler
        if pickler is None:
            pickler = self._pickler = pickle.Pickler(self._buffer, _PROTOCOL)
            pickler.dispatch_table = self._table = _dispatch_table()
        buffer = self._buffer  # empty between calls
        self._busy = True
        try:
            if chunk is not None and (head := self._refs.reference(args[0])) is not None:
                head = chunk + head[1:]  # the chunk's own first byte, then the reference
                pickler.dump(args[1])
            else:
                head = self._refs.reference(fn)
                pickler.dump((fn, args, kwargs) if head is None else (args, kwargs))
        except BaseException as exc:
            self._pickler = None  # a dump cut short may leave it half-way through a frame
            buffer.seek(0)
            buffer.truncate()
            from safepool import _pickling

            if _pickling.may_be_ctrl_c(exc):
                raise  # not pickled again: a real Ctrl-C must not be lost
            return dumps_call(fn, args, kwargs)  # raises, naming what cannot be pickled
        finally:
            self._busy = False
            pickler.clear_memo()  # the memo holds the call's objects: not kept alive
        payload = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()  # a big call's copy is not kept until the next one
        if len(payload) > _KEEP_PICKLER_BELOW:
            # clear_memo() empties the memo but keeps its size: after a call with
            # many objects, every later clear would sweep that whole table.
            self._pickler = None
        return payload if head is None else head + payload


_callers = threading.local()


def pickle_call(fn: Callable[..., Any], args: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> Payload:
    """[`dumps_call`][], with a [`CallPickler`][] kept per calling thread (``submit``)."""
    try:
        pickler: CallPickler = _callers.pickler
    except AttributeError:
        pickler = _callers.pickler = CallPickler()
    # CallPickler.refresh(), for every call, with _dispatch_table's test inlined:
    # this runs for every task, and the registries almost never change.
    seen, live = _seen, _live
    if (live is None or seen[0] != live[0] or seen[1] != live[1]
            or pickler._table is not _table) and pickler._table is not _dispatch_table():
        pickler._pickler = None
    return pickler.dumps(fn, args, kwargs)


def check_initargs(initargs: tuple[Any, ...]) -> None:
    """Fail now if ``initargs`` cannot reach a worker, naming the path (``initargs[0].conn``).

    Multiprocessing objects that may only cross as the worker starts (a
    ``multiprocessing`` Queue or Lock) are allowed: they do, with the process.
    Sockets and multiprocessing connections pickle, and are not duplicated here.
    """
    from safepool import _pickling
    from safepool._errors import PicklingError

    for i, arg in enumerate(initargs):
        culprit = _pickling.find_unpicklable(arg, f"initargs[{i}]")
        if culprit is not None and not _pickling.crosses_only_at_start(culprit):
            hint = _pickling.hint_for(culprit)
            error = PicklingError(culprit.path, culprit.type_name, culprit.reason, hint)
            raise error from culprit.error


def encode_result(result: Any, *, rss: int = 0, seconds: float = 0.0,
                  note: str | None = None) -> bytes:
    """Encode a task's return value as an ``OK`` message.

    A result that cannot be pickled becomes an ``ERR`` message instead: a
    [`PicklingError`][safepool.PicklingError] naming the path inside the result
    (``result.conn._sock``) if pickling raised an ``Exception``; the original
    exception, with its traceback, if it raised anything else (``SystemExit``
    from a ``__reduce__``), as ``concurrent.futures`` delivers it.
    """
    try:
        body = pickle.dumps(result, _PROTOCOL)
    except BaseException as exc:  # workers ignore SIGINT: a KeyboardInterrupt is the result's
        if not isinstance(exc, Exception):
            return encode_error(exc, rss=rss, seconds=seconds, note=note)
        from safepool import _pickling
        from safepool._errors import PicklingError

        try:
            error = _diagnose([("result", result)], _pickling.plain_dumps, returning=True)
        except BaseException:  # the diagnosis must never take the worker down
            error = None
        if error is None:
            error = PicklingError(
                "result", _pickling.type_name(result), _pickling.reason_of(exc), _RESULT_HINT
            )
        return encode_error(error, rss=rss, seconds=seconds, note=note, tb_text="")
    return message(OK, body, rss=rss, seconds=seconds, note=note)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def encode_error(
    exc: BaseException,
    *,
    kind: int = ERR,
    rss: int = 0,
    seconds: float = 0.0,
    note: str | None = None,
    tb_text: str | None = None,
) -> bytes:
    """Encode an exception raised in the worker, with its traceback text.

    The exception is pickled and unpickled here first: if either fails (with
    any exception at all), a [`RemoteError`][safepool.RemoteError] with the type
    name, message, traceback and why (``pickling_error``: the path to what
    cannot be pickled, or why it cannot be rebuilt) goes instead, so one odd
    exception can never break the pool.
    """
    type_name = _type_name(exc)
    if tb_text is None:
        try:
            import traceback

            tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:  # a __str__ that raises even SystemExit
            tb_text = f"{type_name} (its traceback could not be formatted)\n"
    try:
        text = str(exc)
    except BaseException:  # a broken __str__ must not take the worker down
        text = f"<{type_name} with unprintable message>"
    exc_bytes, why = _pickle_exception(exc)
    if why is not None:
        from safepool._errors import RemoteError

        error = RemoteError(type_name, text, tb_text, pickling_error=why)
        exc_bytes = pickle.dumps(error, _PROTOCOL)
    body = pickle.dumps((exc_bytes, type_name, text, tb_text), _PROTOCOL)
    return message(kind, body, rss=rss, seconds=seconds, note=note)


def _pickle_exception(exc: BaseException) -> tuple[bytes, str | None]:
    """``exc`` pickled, or ``b""`` and why it cannot be sent to the parent as itself."""
    try:
        exc_bytes = pickle.dumps(exc, _PROTOCOL)
    except BaseException as error:
        from safepool import _pickling

        try:
            culprit = _pickling.find_unpicklable(exc, "exception", _pickling.plain_dumps)
        except BaseException:  # the diagnosis must never take the worker down
            culprit = None
        if culprit is None:
            return b"", f"it could not be pickled: {describe_error(error)}"
        return b"", _pickling.describe(culprit)
    try:
        pickle.loads(exc_bytes)
    except BaseException as error:
        return b"", f"it could not be rebuilt: {describe_error(error)}"
    return exc_bytes, None


def unloadable_result(exc: BaseException) -> PicklingError:
    """The error for a result the parent could not unpickle, ``exc`` as its cause.

    Its type is "unknown": the parent never got to rebuild it.
    """
    from safepool._errors import PicklingError

    error = PicklingError(
        "result", "unknown", f"it could not be unpickled in the parent: {describe_error(exc)}",
        _RESULT_HINT,
    )
    error.__cause__ = exc
    return error


def describe_error(error: BaseException) -> str:
    """``Type: message``, even for an error whose ``__str__`` raises."""
    try:
        return f"{type(error).__name__}: {error}"
    except BaseException:
        return type(error).__name__


def decode_error(body: bytes | memoryview, pid: int | None) -> BaseException:
    """Rebuild a worker's exception (an ``ERR`` body) in the parent, its child
    traceback as ``__cause__``; a [`RemoteError`][safepool.RemoteError] if it
    cannot be rebuilt, whatever rebuilding it raised (even ``SystemExit``)."""
    from safepool._errors import RemoteError, RemoteTraceback

    exc_bytes, type_name, text, tb_text = pickle.loads(body)  # bytes and strings only
    exc: BaseException
    try:
        exc = pickle.loads(exc_bytes)
        if not isinstance(exc, BaseException):
            raise TypeError(f"expected an exception, got {type(exc).__name__}")
    except BaseException as error:  # the manager thread gets no signals: this is the pickle's
        why = f"it could not be rebuilt in the parent: {describe_error(error)}"
        exc = RemoteError(type_name, text, tb_text, pid, why)
    if isinstance(exc, RemoteError) and exc.pid is None:
        exc.pid = pid
    if tb_text:  # object.__setattr__ also works on frozen dataclass exceptions
        try:
            object.__setattr__(exc, "__cause__", RemoteTraceback(tb_text, pid))
        except (AttributeError, TypeError):  # pragma: no cover - a C type that refuses it
            pass
    return exc
