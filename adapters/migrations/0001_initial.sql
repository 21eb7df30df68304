-- The portal's three-way id mapping and the per-group inbox of processed events.

CREATE TABLE IF NOT EXISTS id_mappings (
    user_id          uuid        NOT NULL UNIQUE,
    whmcs_client_id  integer     NOT NULL UNIQUE,
    sf_account_id    varchar(18) NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id)
);

-- One row per (consumer group, event id) handled. Written in the same transaction as the
-- handler's own writes, so a redelivered event finds its row and is acknowledged without
-- running twice. Rows older than the retention window are deleted in bounded batches.
CREATE TABLE IF NOT EXISTS inbox (
    consumer_group  text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX IF NOT EXISTS inbox_processed_at ON inbox (processed_at);
