"""What every broker launcher shares: free loopback ports, children that die with their parent, and the
lifecycle of one private server process (start, SIGKILL, SIGTERM, restart, close).

Tests, benchmarks and the demo start real brokers (Mosquitto, NATS, RabbitMQ) this way; a launcher
subclass only says how to render its config and when the server is ready.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TypeVar

from shared.errors import FedmqError

_PR_SET_PDEATHSIG = 1
_L = TypeVar("_L", bound="Lifecycle")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (never a fixed one: 1883 has a system broker)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGKILL when the process that started it dies, so a
    server never outlives a test run that crashed, was killed or timed out (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def find_binary(name: str, *fallbacks: str, hint: str, path_first: bool = True) -> str:
    """``name`` on PATH or at one of ``fallbacks`` (tried before PATH when not ``path_first``);
    FedmqError saying how to install it otherwise."""
    on_path = shutil.which(name)
    for candidate in (on_path, *fallbacks) if path_first else (*fallbacks, on_path):
        if candidate and Path(candidate).exists():
            return candidate
    raise FedmqError(f"{name} not found: {hint}")


class Lifecycle:
    """A context manager over ``start()`` and ``close()`` that also closes when ``start()`` fails (a half
    started server or cluster must not outlive the test that wanted it)."""

    def start(self: _L) -> _L:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _L) -> _L:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ServerProcess(Lifecycle):
    """One private server process in its own folder: ``kill()`` (SIGKILL, what a crash looks like),
    ``stop()`` (SIGTERM, then SIGKILL if it lingers), ``restart()``, ``close()`` (stop and remove the
    folder if this object made it); a context manager that closes even when ``start()`` fails.

    Subclasses implement ``start()``; ports and the data folder stay the same across restarts, so
    persistence can be tested.
    """

    #: How long ``stop()`` waits after SIGTERM before it sends SIGKILL.
    stop_grace_s = 10.0

    def __init__(self, workdir: Path | None, *, prefix: str) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix))
        self.process: subprocess.Popen[bytes] | None = None

    def _started(self) -> None:
        """Call right after Popen: an interpreter exit that skipped ``close()`` still kills the server."""
        atexit.register(self.kill)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        """Close the pipes of a process that has exited (a restart makes a new Popen; the old one's
        pipes would otherwise be closed by the garbage collector, with a ResourceWarning)."""
        process = self.process
        if process is None or process.poll() is None:
            return
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    def restart(self, hard: bool = True) -> None:
        self.kill() if hard else self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        atexit.unregister(self.kill)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ["Lifecycle", "ServerProcess", "die_with_parent", "find_binary", "free_port"]
