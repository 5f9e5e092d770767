"""The bench: the physical world's hand (key, e-stop, footswitch, fibres, link faults...) over a Unix socket.

The host can never do these things over Modbus; tests, the fault campaign and an operator at
the CLI do them here. The protocol is JSON lines, one request and one reply per line:

    {"action": ["footswitch", "press"]}
    {"ok": true, "result": {...ground truth after the action...}}
    {"ok": false, "error": "one line saying what was wrong"}

The words go unchanged to `world.bench(words)`, which owns the list of actions
(docs/simulator.md, "Bench commands"). A Unix socket, not TCP: only local users with access to
the socket file can press the footswitch; the file is created mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024  # a request line
MAX_REPLY_BYTES = 1024 * 1024  # a reply line (the ground truth grows with the models)
DEFAULT_TIMEOUT_S = 10.0


class Bench(Protocol):
    def bench(self, words: Sequence[str]) -> dict[str, Any]: ...


class BenchServeError(RuntimeError):
    """The bench socket could not be created (one-line message)."""


class BenchRequestError(RuntimeError):
    """A bench request failed (one-line message)."""


class BenchUnavailable(BenchRequestError):
    """Nothing answers at the socket path."""


class BenchRefused(BenchRequestError):
    """The bench answered with an error (bad action or arguments)."""


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "error"


# --- server -------------------------------------------------------------------------------------------


def _answer(world: Bench, line: bytes, refusal: type[Exception]) -> dict[str, Any]:
    """The reply to one request line; `refusal` is the world's "bad action" exception (BenchError)."""
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "request is not JSON"}
    words = request.get("action") if isinstance(request, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        return {"ok": False, "error": 'request must be {"action": ["word", ...]}'}
    try:
        result = world.bench(words)
    except refusal as exc:
        return {"ok": False, "error": _one_line(str(exc))}
    except Exception as exc:
        log.exception("bench action %r failed", words)
        return {"ok": False, "error": _one_line(f"bench action failed: {type(exc).__name__}: {exc}")}
    return {"ok": True, "result": result}


def _encode_reply(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        log.error("bench reply not serialisable: %s", exc)
        return json.dumps({"ok": False, "error": _one_line(f"bench result not serialisable: {exc}")}).encode() + b"\n"


class BenchServerHandle:
    """A listening bench socket. `stop()` closes it and removes the socket file it created."""

    def __init__(self, *, server: asyncio.AbstractServer, path: str, inode: int, clients: set[asyncio.Task[Any]]) -> None:
        self._server = server
        self._inode = inode
        self._clients = clients
        self.path = path

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        # remove the file only if it is still ours (not a later server's socket at the same path)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


async def start_bench_server(world: Bench, *, path: str) -> BenchServerHandle:
    """Listen on a Unix socket at `path`; a stale socket file left by a dead simulator is replaced."""
    from .world import BenchError  # here, not at the top: the clients need none of the models

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise BenchServeError(f"cannot create bench socket {path}: a file that is not a socket is in the way")
        if _listening(path):
            raise BenchServeError(f"cannot create bench socket {path}: another simulator is listening on it")
        os.unlink(path)

    clients: set[asyncio.Task[Any]] = set()  # so that stop() can end connections still open

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the stream limit: the connection is beyond repair
                    writer.write(_encode_reply({"ok": False, "error": f"request longer than {MAX_LINE_BYTES} bytes"}))
                    await writer.drain()
                    break
                if not line:
                    break
                writer.write(_encode_reply(_answer(world, line, BenchError)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_unix_server(client, path=path, limit=MAX_LINE_BYTES)
        os.chmod(path, 0o600)
        inode = os.stat(path).st_ino
    except OSError as exc:
        raise BenchServeError(f"cannot create bench socket {path}: {exc.strerror or exc}") from exc
    return BenchServerHandle(server=server, path=path, inode=inode, clients=clients)


# --- clients ---------------------------------------------------------------------------------------------


def _request_line(words: Sequence[str]) -> bytes:
    return json.dumps({"action": [str(w) for w in words]}).encode() + b"\n"


def _unavailable(path: str, exc: BaseException) -> BenchUnavailable:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return BenchUnavailable(f"no simulator bench at {path} ({reason}); start one with: laser-sim serve ... --bench {path}")


def _parse_reply(path: str, line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise BenchUnavailable(f"bench at {path} closed the connection without a reply")
    try:
        reply = json.loads(line)
    except ValueError:
        raise BenchRequestError(f"bench at {path} sent a reply that is not JSON") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise BenchRequestError(f"bench at {path} sent a malformed reply")
    if not reply["ok"]:
        raise BenchRefused(_one_line(str(reply.get("error", "error"))))
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


async def bench_request(path: str, words: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Carry out one bench action; returns its result, raises BenchRefused / BenchUnavailable."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=MAX_REPLY_BYTES), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        raise _unavailable(path, exc) from exc
    try:
        writer.write(_request_line(words))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        raise BenchRequestError(f"bench at {path} did not answer: {type(exc).__name__}") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return _parse_reply(path, line)


def bench_request_sync(path: str, words: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The blocking twin of `bench_request`, for scripts and code without an event loop."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            raise _unavailable(path, exc) from exc
        try:
            sock.sendall(_request_line(words))
            received = bytearray()
            while not received.endswith(b"\n") and len(received) <= MAX_REPLY_BYTES:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError as exc:
            raise BenchRequestError(f"bench at {path} did not answer: {type(exc).__name__}") from exc
    return _parse_reply(path, bytes(received))
