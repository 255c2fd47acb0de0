"""Pytest fixtures for the local services the integration tests talk to.

Every service is on loopback only (``127.0.0.1``); ``bash .ci/services.sh`` starts the ones that
are down. Each fixture checks once per session, with a real connection and a short timeout, that
its service answers:

- ``postgres_dsn``: a libpq DSN string for database ``test`` (user ``postgres``, trust auth);
- ``mariadb_params``: keyword arguments for ``pymysql.connect`` (root, empty password, db ``test``);
- ``mosquitto_address``: ``(host, port)`` of the MQTT broker.

A service that does not answer skips the tests that need it, except in CI (``CI=true`` in the
environment), where it fails them: CI must never pass by skipping. ``importorskip`` does the same
for a client library that is not installed, except for one listed in ``KNOWN_MISSING``: it cannot
be installed on this Python, so pyproject.toml leaves it out there and its tests skip, in CI too.
A test module that needs such a library at import time calls ``importorskip`` at its top level
(never a plain ``import``), so that on those Pythons it skips at collection instead of erroring.

The ports can be changed with ``SAFEPOOL_POSTGRES_PORT``, ``SAFEPOOL_MARIADB_PORT`` and
``SAFEPOOL_MOSQUITTO_PORT`` (the host is always 127.0.0.1), which is also how to see the skip
path: ``SAFEPOOL_MOSQUITTO_PORT=1 pytest tests/test_fork_hazards.py -k mqtt``.

Use the fixtures from a test module or conftest with ``pytest_plugins = ["tests.services"]``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import socket
import struct
import sys
from types import ModuleType
from typing import Any, NoReturn

import pytest

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 3.0


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"SAFEPOOL_{name}_PORT", default))


POSTGRES_PORT = _port("POSTGRES", 5432)
MARIADB_PORT = _port("MARIADB", 3306)
MOSQUITTO_PORT = _port("MOSQUITTO", 1883)


# Kept in step with the environment markers in pyproject.toml: CI on these Pythons runs without
# the library, so its tests can only skip there, and the reason says why.
KNOWN_MISSING: dict[str, str] = {}
if sys.version_info[:2] == (3, 15):
    KNOWN_MISSING["confluent_kafka"] = (
        "confluent-kafka has no wheel for Python 3.15 yet"
        " (and it does not build against this machine's librdkafka)"
    )


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``, as .ci/run sets)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the current test (or module) because something is missing; fail instead in CI."""
    __tracebackhide__ = True
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service or library is a failure)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _known_missing(modname: str) -> str | None:
    return KNOWN_MISSING.get(modname.partition(".")[0])


def importorskip(modname: str, minversion: str | None = None) -> ModuleType:
    """Import and return ``modname``; if it is missing or older than ``minversion``, skip the
    test (fail in CI, unless ``KNOWN_MISSING`` says why it cannot be installed here). Like
    ``pytest.importorskip``, but CI-aware."""
    __tracebackhide__ = True
    try:
        module = importlib.import_module(modname)
    except ImportError as exc:
        known = _known_missing(modname)
        if known is not None:
            pytest.skip(known, allow_module_level=True)
        unavailable(f"client library {modname!r} is not importable: {exc}")
    if minversion is not None:
        from packaging.version import Version

        have = getattr(module, "__version__", None)
        if have is None or Version(str(have)) < Version(minversion):
            unavailable(f"client library {modname!r} is {have}, at least {minversion} is needed")
    return module


def import_unless_known_missing(modname: str) -> ModuleType | None:
    """``importorskip(modname)``, except that a library ``KNOWN_MISSING`` here gives None: for a
    test that uses it as one of several, which is still worth running without it."""
    __tracebackhide__ = True
    if _known_missing(modname) is not None and importlib.util.find_spec(
        modname.partition(".")[0]
    ) is None:
        return None
    return importorskip(modname)


# --- reachability checks: real protocol handshakes, no client library needed ----------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection during the handshake")
        data += chunk
    return data


def _check_postgres(port: int) -> None:
    """Log in to database ``test`` as ``postgres`` and wait for ReadyForQuery."""
    params = b"user\0postgres\0database\0test\0application_name\0safepool-tests-probe\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    with socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT) as sock:
        sock.sendall(startup)
        while True:
            kind, length = struct.unpack("!ci", _recv_exact(sock, 5))
            body = _recv_exact(sock, length - 4)
            if kind == b"E":
                fields = dict(
                    (f[:1], f[1:].decode(errors="replace")) for f in body.split(b"\0") if f
                )
                raise ConnectionError(f"server refused the login: {fields.get(b'M', body)!r}")
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise ConnectionError("server asks for a password (trust auth expected)")
            if kind == b"Z":  # ReadyForQuery
                sock.sendall(b"X\0\0\0\4")  # Terminate
                return


def _check_mariadb(port: int) -> None:
    """Read the server greeting; log in with PyMySQL when it is installed."""
    with socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT) as sock:
        header = _recv_exact(sock, 4)
        payload = _recv_exact(sock, int.from_bytes(header[:3], "little"))
        if payload[:1] == b"\xff":
            raise ConnectionError(f"server refused the connection: {payload[3:]!r}")
        if payload[:1] != b"\x0a":
            raise ConnectionError(f"not a MySQL/MariaDB greeting: {payload[:16]!r}")
    try:
        import pymysql
    except ImportError:
        return
    pymysql.connect(**_mariadb_params(port), connect_timeout=CONNECT_TIMEOUT).close()


def _check_mosquitto(port: int) -> None:
    """MQTT 3.1.1 CONNECT with an empty client id and clean session; expect CONNACK 0."""
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a" + b"\x00\x00"
    with socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT) as sock:
        sock.sendall(bytes([0x10, len(variable)]) + variable)
        connack = _recv_exact(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the MQTT connection: CONNACK {connack!r}")
        sock.sendall(b"\xe0\x00")  # DISCONNECT


@functools.cache
def _probe(name: str, port: int) -> str | None:
    """None if the service answers, else the error text. Cached: once per session."""
    check = {
        "PostgreSQL": _check_postgres,
        "MariaDB": _check_mariadb,
        "Mosquitto": _check_mosquitto,
    }[name]
    try:
        check(port)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_service(name: str, port: int) -> None:
    """Skip (fail in CI) unless service ``name`` answers on 127.0.0.1:``port``."""
    __tracebackhide__ = True
    error = _probe(name, port)
    if error is not None:
        unavailable(f"{name} is not reachable at {HOST}:{port}: {error}")


# --- fixtures ---------------------------------------------------------------------------------


def _postgres_dsn(port: int) -> str:
    return f"host={HOST} port={port} dbname=test user=postgres connect_timeout=5"


def _mariadb_params(port: int) -> dict[str, Any]:
    return {"host": HOST, "port": port, "user": "root", "password": "", "database": "test"}


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """libpq DSN for database ``test`` on the local PostgreSQL (user ``postgres``)."""
    require_service("PostgreSQL", POSTGRES_PORT)
    return _postgres_dsn(POSTGRES_PORT)


@pytest.fixture(scope="session")
def mariadb_params() -> dict[str, Any]:
    """``pymysql.connect(**mariadb_params)`` arguments for database ``test`` on MariaDB."""
    require_service("MariaDB", MARIADB_PORT)
    return _mariadb_params(MARIADB_PORT)


@pytest.fixture(scope="session")
def mosquitto_address() -> tuple[str, int]:
    """``(host, port)`` of the local Mosquitto MQTT broker."""
    require_service("Mosquitto", MOSQUITTO_PORT)
    return (HOST, MOSQUITTO_PORT)
