-- Pub/Sub API positions in the CDC checkpoints (adapters/cdc_checkpoints/pg.py).
--
-- The Pub/Sub API (gRPC) identifies a position by an opaque replay id of bytes, which is never a
-- number: it gets a column of its own, beside CometD's integer replay_id. A row holds the position
-- of the transport that wrote it last, so at most one of the two is set (both NULL after a replay
-- fallback, as before). A row written by the other transport is not resumed from: the subscriber
-- falls back and resyncs from position_time (workers/ingress/sf_cdc.py, sf_cdc_transport_switched).
ALTER TABLE sf_cdc_checkpoints ADD COLUMN IF NOT EXISTS pubsub_replay_id bytea;

ALTER TABLE sf_cdc_checkpoints DROP CONSTRAINT IF EXISTS sf_cdc_checkpoints_one_position;
ALTER TABLE sf_cdc_checkpoints ADD CONSTRAINT sf_cdc_checkpoints_one_position
    CHECK (replay_id IS NULL OR pubsub_replay_id IS NULL);
