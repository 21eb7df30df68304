-- The dead-letter ops CLI (`fleet dlq`, workers/dlq): audit trail, replay progress, purge marks.
--
-- Kafka keeps the dead letters themselves (<group>.dlq); these tables only remember what operators
-- did to them, keyed by the record's coordinates in the DLQ topic (group, partition, offset).

-- One row per `fleet dlq replay` / `fleet dlq purge` run, dry runs included. Inserted as 'running'
-- when the job starts, finished with its counts; a job killed hard stays 'running' until the next
-- job of the same group (which holds the group's advisory lock, so none can still be running)
-- marks it 'interrupted'.
CREATE TABLE IF NOT EXISTS dlq_audit (
    job_id          uuid        PRIMARY KEY,
    action          text        NOT NULL,
    consumer_group  text        NOT NULL,
    operator        text        NOT NULL,
    host            text        NOT NULL,
    dry_run         boolean     NOT NULL,
    filters         jsonb       NOT NULL,
    counts          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status          text        NOT NULL DEFAULT 'running',
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT dlq_audit_action_check CHECK (action IN ('replay', 'purge')),
    CONSTRAINT dlq_audit_status_check CHECK (status IN ('running', 'completed', 'interrupted', 'failed'))
);
CREATE INDEX IF NOT EXISTS dlq_audit_group ON dlq_audit (consumer_group, started_at);

-- One row per dead letter a replay job re-sent (to <group>.retry.1) or parked (to <group>.parked).
-- state = 'sending' is written BEFORE the produce and 'done' after the broker acknowledged it, so a
-- row left in 'sending' by a killed job is "in doubt": the next job looks for the copy on
-- target_topic/target_partition from scan_from on (by replay_job header and fingerprint) and
-- either marks the row done or forgets it. That is what makes replay resumable without duplicates.
CREATE TABLE IF NOT EXISTS dlq_replay_progress (
    consumer_group   text        NOT NULL,
    dlq_partition    integer     NOT NULL,
    dlq_offset       bigint      NOT NULL,
    job_id           uuid        NOT NULL,
    previous_job_id  uuid,                       -- the job that replayed it before (`--again`)
    outcome          text        NOT NULL,
    state            text        NOT NULL,
    event_id         text,
    fingerprint      text        NOT NULL,
    target_topic     text        NOT NULL,
    target_partition integer     NOT NULL,
    scan_from        bigint      NOT NULL,       -- no copy of this job can sit below this offset
    target_offset    bigint,
    replays          integer     NOT NULL DEFAULT 1,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, dlq_partition, dlq_offset),
    CONSTRAINT dlq_replay_progress_outcome_check CHECK (outcome IN ('replayed', 'parked')),
    CONSTRAINT dlq_replay_progress_state_check CHECK (state IN ('sending', 'done'))
);
CREATE INDEX IF NOT EXISTS dlq_replay_progress_job ON dlq_replay_progress (job_id);
CREATE INDEX IF NOT EXISTS dlq_replay_progress_in_doubt
    ON dlq_replay_progress (consumer_group) WHERE state = 'sending';

-- Dead letters an operator purged. Kafka cannot delete one record, so purge hides them from
-- list/show/replay; `--truncate` may additionally delete a purged prefix of a partition.
CREATE TABLE IF NOT EXISTS dlq_purged (
    consumer_group  text        NOT NULL,
    dlq_partition   integer     NOT NULL,
    dlq_offset      bigint      NOT NULL,
    job_id          uuid        NOT NULL,
    event_id        text,
    purged_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, dlq_partition, dlq_offset)
);
