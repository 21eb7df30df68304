"""The runtime's loop knobs (``Tuning``): production defaults that tests and benchmarks shrink.

Owns the values only. Must not read the environment: what an operator sets lives in
``workers.config.RuntimeSettings``; these are the engineering constants behind it, each with the
measurement that chose it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.runtime.breaker import BreakerConfig
from workers.runtime.polling import PollTuning


@dataclass(frozen=True)
class Tuning:
    """Loop knobs with production defaults; tests shrink them."""

    poll_timeout_ms: int = 100  # how long one getmany waits for data (also the stop-signal latency)
    # Shallow on purpose: a record is decoded and handled soon after aiokafka built it, while it is
    # still in the CPU cache (with 4,000 buffered per partition and 10,000 per getmany the same loop
    # cost ~0.7 us more per record in bench/runtime_bench.py). Deep buffers used to hide a fetch
    # stall (polling.FetchPacing, which fixes it instead). A partition's buffer may overshoot
    # buffer_per_partition by up to max_records.
    max_records: int = 500
    buffer_per_partition: int = 500  # pause fetching above this, resume below half
    commit_interval_s: float = 0.2  # commit done offsets at least this often...
    commit_every: int = 5_000  # ...or after this many done records
    revoke_grace_s: float | None = None  # wait for in-flight records of revoked partitions (None: see Worker)
    liveness_timeout_s: float = 60.0  # /livez fails when the loop or a handler is stuck longer
    purge_interval_s: float = 3_600.0  # inbox purge period (with a pool)
    purge_batch: int = 1_000
    purge_max_batches: int = 100
    yield_every: int = 64  # records a partition task handles before letting other tasks run
    freeze_gc: bool = True  # see gc_policy.freeze
    # Young collections every this many seconds from the poll loop instead of CPython's allocation
    # counter (None: the counter), see workers.runtime.gc_policy
    gc_interval_s: float | None = 0.1
    # gen-1 (or timed) collections between two full ones (CPython's threshold2, default 10), see gc_policy
    gc_full_every: int = 100
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def poll(self) -> PollTuning:
        """The poll loop's share of the knobs."""
        return PollTuning(
            self.poll_timeout_ms,
            self.max_records,
            self.buffer_per_partition,
            self.commit_interval_s,
            self.commit_every,
            self.gc_interval_s,
            self.gc_full_every,
        )
