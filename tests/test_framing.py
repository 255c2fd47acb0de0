"""The buffered framing both ends use is byte-compatible with multiprocessing's Connection."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

import pytest

from safepool._transport import FrameReader, frame, write_all

pytestmark = pytest.mark.timeout(30)

MESSAGES = [b"", b"x", b"hello" * 1000, bytes(range(256)) * 4096, b"", b"tail"]


def test_frame_reader_reads_what_connection_sends():
    ours, theirs = Pipe(duplex=True)
    with ours, theirs:
        sender = threading.Thread(target=lambda: [theirs.send_bytes(m) for m in MESSAGES])
        sender.start()  # the 1 MiB message does not fit the socket buffer: it arrives in parts
        reader = FrameReader(ours.fileno())
        got = [reader.next() for _ in MESSAGES]
        sender.join()
    assert got == MESSAGES


def test_connection_reads_what_frame_and_write_all_send():
    ours, theirs = Pipe(duplex=True)
    with ours, theirs:
        data = b"".join(frame(m) for m in MESSAGES)
        writer = threading.Thread(target=write_all, args=(ours.fileno(), data))
        writer.start()
        got = [theirs.recv_bytes() for _ in MESSAGES]
        writer.join()
    assert got == MESSAGES


def test_take_returns_only_complete_messages_and_keeps_the_rest():
    ours, theirs = Pipe(duplex=True)
    with ours, theirs:
        data = frame(b"one") + frame(b"two") + frame(b"three")
        cut = len(frame(b"one")) + 3  # the second message's header is cut short
        write_all(ours.fileno(), data[:cut])
        reader = FrameReader(theirs.fileno())
        assert reader.fill()
        assert reader.take() == [b"one"]
        write_all(ours.fileno(), data[cut:])
        assert reader.fill()
        assert reader.take() == [b"two", b"three"]
        ours.close()
        assert reader.fill() is False  # EOF
        assert reader.take() == []


def test_a_big_bytes_argument_travels_out_of_band_and_arrives_as_bytes():
    import pickle

    from safepool import _transport

    big = bytes(range(256)) * 1024  # 256 KiB: at least OOB_MIN
    small = b"small"
    payload = _transport.dumps_call(len, (big, small, bytearray(big)), {"k": big})
    assert isinstance(payload, _transport.OutOfBandCall)
    # Only the two bytes objects are left out of the stream, and by reference, not copied.
    assert len(payload.buffers) == 2 and payload.buffers[0].obj is big
    assert len(payload.stream) < len(big) + 1024  # the bytearray is in the stream
    ours, theirs = Pipe(duplex=True)
    with ours, theirs:
        sender = threading.Thread(target=write_all, args=(theirs.fileno(),
                                                          _transport.frame(payload)))
        sender.start()
        data = FrameReader(ours.fileno()).next()
        sender.join()
    fn, args, kwargs = _transport.load_call(data)
    assert fn is len and args == (big, small, bytearray(big)) and kwargs == {"k": big}
    assert [type(a) for a in args] == [bytes, bytes, bytearray] and type(kwargs["k"]) is bytes
    assert _transport.load_call(pickle.dumps((len, (), {}))) == (len, (), {})
