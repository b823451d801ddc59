"""Running Causerie's `serve` inside a test: in a thread (fast) or as a process (for kills)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bridge import serve
from bridge.app import App


@contextmanager
def serving(app: App, timeout: float = 20) -> Iterator[App]:
    """`serve.run(app)` on its own event loop in a thread, until the block ends."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        parts = serve.services(app)
        started = []
        try:
            for part in parts:
                await part.start()
                started.append(part)
            ready.set()
            await stop.wait()
        finally:
            for part in reversed(started):
                await part.stop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            errors.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="serve", daemon=True)
    thread.start()
    if not ready.wait(timeout) or errors:
        raise RuntimeError(f"serve did not start: {errors}")
    try:
        yield app
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if errors:
            raise errors[0]


def wait_for(predicate, timeout: float = 20, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is truthy; return its value or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


class ServeProcess:
    """`causerie serve` as a child process, for tests that kill it."""

    def __init__(self, settings_path: Path, log_path: Path) -> None:
        self.settings_path = settings_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "--config", str(self.settings_path), "serve"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: b"causerie is running" in self.log_path.read_bytes()[offset:]
                 or self.process.poll() is not None, timeout)  # type: ignore[union-attr]
        if self.process.poll() is not None:
            raise RuntimeError(self.log_path.read_text(errors="replace")[-3000:])

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
