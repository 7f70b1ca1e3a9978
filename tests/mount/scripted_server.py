"""A tiny TCP peer that replays an exact byte conversation (PyMeasure style).

Each accepted connection consumes the next script: a list of ``(expected, reply)`` byte
pairs. The server reads exactly one line per step, records any mismatch, writes the reply
and, after the script, records any further bytes the client sent. ``CLOSE`` as a reply
hangs up; ``SILENT`` sends nothing (for timeouts). ``check()`` fails the test on a
mismatch, an unconsumed step, or unexpected extra bytes.
"""

from __future__ import annotations

import asyncio

CLOSE = b"<close>"
SILENT = b"<silent>"

Script = list[tuple[bytes, bytes]]


class ScriptedServer:
    def __init__(self, *scripts: Script):
        self.scripts = list(scripts)
        self.connections = 0
        self.problems: list[str] = []
        self.unconsumed: list[tuple[int, int]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Let handlers see the client's hang-up (and any last unscripted bytes) first.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=1.0)
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._server.wait_closed()

    def check(self) -> None:
        """Fail on any mismatch, extra bytes, or script steps never reached."""
        assert not self.problems, "\n".join(self.problems)
        left = len(self.scripts) - self.connections
        assert left <= 0, f"{left} scripted connection(s) never made"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        index = self.connections
        self.connections += 1
        try:
            if index >= len(self.scripts):
                self.problems.append(f"unexpected connection #{index + 1}")
                return
            script = self.scripts[index]
            for step, (expected, reply) in enumerate(script):
                line = await reader.readline()
                if line != expected:
                    self.problems.append(
                        f"connection {index + 1} step {step + 1}: expected {expected!r}, got {line!r}")
                    return
                if reply == CLOSE:
                    if step != len(script) - 1:
                        self.problems.append(f"connection {index + 1}: CLOSE before the end")
                    return
                if reply != SILENT:
                    writer.write(reply)
                    await writer.drain()
            # Anything more the client sends on this connection, up to its hang-up,
            # is unscripted.
            extra = await reader.read()
            if extra:
                self.problems.append(f"connection {index + 1}: unscripted bytes {extra!r}")
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._handlers.discard(task)
