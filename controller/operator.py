"""The operator's socket: a Unix socket speaking one JSON object per line each way.

Request:  {"cmd": "status"} or {"cmd": "load", "plan_text": "...", "plan_path": "..."}
Reply:    {"ok": true, "result": {...}} or {"ok": false, "error": "one line"}

Nothing said on this socket can start emission: arming only allows the physical footswitch to.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("laserd.operator")

MAX_REQUEST_BYTES = 1 << 20  # a plan file is a few kB; anything near this is not an operator
DEFAULT_SOCKET_MODE = 0o660


class CommandError(Exception):
    """A command that cannot be carried out; its message is the one line the operator sees."""


Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class OperatorServer:
    def __init__(self, *, path: Path, handler: Handler, mode: int = DEFAULT_SOCKET_MODE, group: str | None = None) -> None:
        self.path = path
        self.mode = mode
        self.group = group
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, self.mode)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self._one(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away or sent an over-long line: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as err:
            return {"ok": False, "error": f"request is not JSON: {err.msg} at column {err.colno}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be a JSON object with a string "cmd"'}
        cmd = request.pop("cmd")
        try:
            result = await self._handler(cmd, request)
        except CommandError as err:
            log.info("event=command-refused cmd=%s reason=%s", cmd, err)
            return {"ok": False, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - the daemon must answer, and must not die of one command
            log.exception("event=command-failed cmd=%s", cmd)
            return {"ok": False, "error": f"internal error in {cmd}: {type(err).__name__}: {err}"}
        log.info("event=command cmd=%s", cmd)
        return {"ok": True, "result": result}


async def request(path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    """Send one command and return the daemon's reply (used by laserctl and tests)."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REQUEST_BYTES)
    try:
        writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise ConnectionError("laserd closed the connection without answering")
    return json.loads(line)
