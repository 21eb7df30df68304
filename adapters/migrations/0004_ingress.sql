-- Replay-id checkpoints of the Salesforce CDC subscriber (workers/ingress/checkpoints.py).
--
-- One row per (subscriber, channel). replay_id is written only after Kafka acknowledged every
-- domain event derived from it and from everything received before it on that channel, so
-- resuming from it loses nothing. replay_id is NULL after a replay fallback (or a catch-up
-- resync on a quiet channel): position_time then says up to when the channel is known to be
-- consistent, and the next start resyncs from there. reset_* keep the last fallback for audit.
CREATE TABLE IF NOT EXISTS sf_cdc_checkpoints (
    subscriber     text        NOT NULL,
    channel        text        NOT NULL,
    replay_id      bigint,
    position_time  timestamptz,
    reset_reason   text,
    reset_at       timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber, channel)
);
