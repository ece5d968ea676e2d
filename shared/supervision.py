"""Supervised long-lived tasks and per-message fault boundaries.

A component (the aggregator, a device) runs a few tasks for its whole life: the intake loop, the round
loop, the connection. If one of them raised an unexpected exception and nobody awaited it, the process
would stay up doing nothing ("Task exception was never retrieved" at exit, if at all). Every such task is
started through a :class:`Supervisor`: an unexpected exception is logged with its traceback and the task
is restarted after a backoff; when it keeps failing (``max_failures`` within ``window_s``) the supervisor
gives up and records a :class:`SupervisionError`, which :meth:`Supervisor.watch` raises in the component's
main coroutine so the process ends with a one-line cause and a non-zero exit instead of idling.

:class:`FaultCounter` is the per-message boundary's bookkeeping: one counter per rule, and a bounded
record of the last rejections (sender, topic, rule) for tests and metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.errors import FedmqError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rule name of an exception no rule anticipated (a bug): the message is dropped, the loop goes on.
INTERNAL_ERROR = "internal-error"

#: Seconds a cancelled main coroutine may take over its clean-up (:meth:`Supervisor.watch`).
STOP_GRACE_S = 5.0


class SupervisionError(FedmqError):
    """A long-lived task kept failing and was given up; the component cannot go on."""


@dataclass(frozen=True)
class Rejection:
    """One message a component refused: who sent it, where, and which rule it broke."""

    sender: str
    topic: str
    rule: str
    detail: str


class FaultCounter:
    """Counts rejected messages by rule; keeps the last ``keep`` of them (memory stays bounded)."""

    def __init__(self, keep: int = 1000) -> None:
        self.by_rule: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[Rejection] = collections.deque(maxlen=keep)

    def record(self, sender: str, topic: str, rule: str, detail: str) -> Rejection:
        rejection = Rejection(sender, topic, rule, detail)
        self.by_rule[rule] += 1
        self.recent.append(rejection)
        return rejection

    @property
    def total(self) -> int:
        return sum(self.by_rule.values())


def rule_of(exc: BaseException) -> str:
    """The rule a handling error stands for: the fedmq error class, or :data:`INTERNAL_ERROR`."""
    return type(exc).__name__ if isinstance(exc, FedmqError) else INTERNAL_ERROR


class Supervisor:
    """Starts named long-lived coroutines, restarts them on unexpected exceptions, gives up when they
    keep failing. ``await supervisor.watch(main())`` runs ``main`` until it ends or a task is given up.

    A task that *returns* is done (not restarted); one that raises :class:`asyncio.CancelledError` was
    stopped on purpose. Everything else is a failure: logged with its traceback, then the task is
    restarted after ``backoff_s * 2**(n-1)`` seconds (capped at ``max_backoff_s``), where ``n`` counts
    its failures within the last ``window_s`` seconds; at ``max_failures`` of them it is given up.
    """

    def __init__(
        self,
        owner: str,
        *,
        max_failures: int = 5,
        window_s: float = 60.0,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.owner = owner
        self.max_failures = max_failures
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed: asyncio.Future[SupervisionError] | None = None
        #: Failures per task name since start (restarts included), for metrics and tests.
        self.failures: collections.Counter[str] = collections.Counter()

    @property
    def error(self) -> SupervisionError | None:
        """The reason the supervisor gave up, if it did."""
        failed = self._failed
        return failed.result() if failed is not None and failed.done() else None

    def _failed_future(self) -> asyncio.Future[SupervisionError]:
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``factory()`` as the supervised task ``name`` (a fresh awaitable on every restart)."""
        self._failed_future()
        task = asyncio.create_task(self._keep_running(name, factory), name=f"{self.owner}-{name}")
        self._tasks[name] = task
        return task

    def fail(self, name: str, exc: BaseException) -> None:
        """Give up: record why, so :meth:`watch` ends the component with that cause."""
        failed = self._failed_future()
        if not failed.done():
            error = SupervisionError(f"{self.owner}: {name} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            failed.set_result(error)
            log.critical("%s", error)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        recent: collections.deque[float] = collections.deque()
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the point of a supervisor
                now = time.monotonic()
                recent.append(now)
                while recent and recent[0] < now - self.window_s:
                    recent.popleft()
                self.failures[name] += 1
                if len(recent) >= self.max_failures:
                    log.error("%s: task %s failed %d times in %.0f s", self.owner, name, len(recent),
                              self.window_s, exc_info=exc)  # fmt: skip
                    self.fail(name, exc)
                    return
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (len(recent) - 1))
                log.error("%s: task %s failed; restarting in %.1f s", self.owner, name, delay, exc_info=exc)
                await asyncio.sleep(delay)

    async def watch(self, main: Awaitable[T]) -> T:
        """Await ``main``; if a supervised task is given up first, cancel ``main`` and raise why.

        Either way a cancelled ``main`` gets up to :data:`STOP_GRACE_S` to run its clean-up (close its
        round, a last publish) before this returns: it must not outlive its caller unseen.
        """
        failed = self._failed_future()
        if failed.done():
            raise failed.result()
        work = asyncio.ensure_future(main)
        try:
            racing: list[asyncio.Future[Any]] = [work, failed]
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):  # cancelled again: stop waiting, still raise
                await self._stop(work)
            raise
        if not work.done():
            await self._stop(work)
            raise failed.result()
        return work.result()

    async def _stop(self, work: asyncio.Future[Any]) -> None:
        work.cancel()
        await asyncio.wait([work], timeout=STOP_GRACE_S)
        if not work.done():
            log.error("%s: its main task did not end within %.0f s of being cancelled", self.owner,
                      STOP_GRACE_S)  # fmt: skip
        elif not work.cancelled() and work.exception() is not None:
            log.error("%s: its main task failed while stopping", self.owner, exc_info=work.exception())

    async def close(self) -> None:
        """Cancel every supervised task and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


async def guarded(
    coro: Awaitable[None], *, where: str, on_error: Callable[[BaseException], None] | None = None
) -> None:
    """Await a one-off step (a secure-round phase, a reconnect callback); never let it die unheard.

    Expected failures (:class:`FedmqError`, timeouts) are logged as warnings; anything else is a bug and
    is logged with its traceback. ``on_error`` (for counters) is called either way.
    """
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except (FedmqError, asyncio.TimeoutError) as exc:
        log.warning("%s failed: %s", where, exc)
        if on_error is not None:
            on_error(exc)
    except Exception as exc:  # a per-task fault boundary
        log.error("%s failed unexpectedly", where, exc_info=exc)
        if on_error is not None:
            on_error(exc)


async def run_to_end(future: asyncio.Future[T]) -> T:
    """Await ``future`` to its end even if the caller is cancelled meanwhile, then re-raise that
    cancellation. For bounded clean-up that must not be cut short: stopping child processes whose
    pipes would otherwise outlive the event loop."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


__all__ = [
    "INTERNAL_ERROR",
    "FaultCounter",
    "Rejection",
    "SupervisionError",
    "Supervisor",
    "guarded",
    "rule_of",
    "run_to_end",
]
