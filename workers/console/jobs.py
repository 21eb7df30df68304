"""Replay jobs started from the console: run in the background, followed by the page, stoppable.

Owns the in-process list of the console's replay jobs and their progress (records planned, sent,
the final counts or the error). A job is exactly ``workers.dlq.replay.replay``, the CLI's function,
with a listener that counts instead of drawing a bar; so it is locked per group, audited, paced
and resumable the same way: stopping a job (or killing the console) leaves its progress rows, and
starting the same filters again skips what was already replayed. Must not replay anything itself.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from adapters.kafka import KafkaTarget
from workers.dlq.replay import ReplayOptions, ReplayReport, replay
from workers.dlq.selection import REFUSED, Action

log = structlog.get_logger(__name__)


@dataclass
class ReplayJob:
    """One console-started replay: what it was asked, how far it got, how it ended."""

    number: int
    opts: ReplayOptions
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    planned: int = 0
    sent: int = 0
    status: str = "running"  # running | completed | failed | interrupted
    error: str | None = None
    report: ReplayReport | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        return 100 if not self.planned else min(100, round(100 * self.sent / self.planned))

    @property
    def finished(self) -> bool:
        return self.status != "running"

    # ReplayListener
    def planned_actions(self, actions: Sequence[Action]) -> None:
        self.planned = sum(a.outcome != REFUSED for a in actions)


class _Listener:
    def __init__(self, job: ReplayJob) -> None:
        self.job = job

    def planned(self, actions: Sequence[Action]) -> None:
        self.job.planned_actions(actions)

    def sent(self, count: int) -> None:
        self.job.sent += count


class ReplayJobs:
    """The console's replay jobs, newest first; ``start`` returns at once, the job runs on."""

    def __init__(self, kafka: KafkaTarget, dsn: str) -> None:
        self.kafka, self.dsn = kafka, dsn
        self.jobs: dict[int, ReplayJob] = {}
        self._numbers = itertools.count(1)

    def start(self, opts: ReplayOptions) -> ReplayJob:
        job = ReplayJob(next(self._numbers), opts)
        job.task = asyncio.create_task(self._run(job), name=f"console-replay-{job.number}")
        self.jobs[job.number] = job
        return job

    async def _run(self, job: ReplayJob) -> None:
        try:
            job.report = await replay(self.kafka, self.dsn, job.opts, _Listener(job))
            job.status = "completed"
        except asyncio.CancelledError:
            job.status = "interrupted"  # the audit row says so too; the same filters resume it
        except Exception as exc:  # shown on the page: the job's own audit row holds the same error
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("console_replay_failed", group=job.opts.group, error=job.error)

    def stop(self, number: int) -> ReplayJob | None:
        job = self.jobs.get(number)
        if job is not None and job.task is not None and not job.task.done():
            job.task.cancel()
        return job

    def of_group(self, group: str) -> list[ReplayJob]:
        return sorted((j for j in self.jobs.values() if j.opts.group == group), key=lambda j: -j.number)

    async def close(self) -> None:
        """Stop every running job (its progress is saved; the audit row says 'interrupted')."""
        running = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
