-- Durable timers of the fulfillment saga (workers/fulfillment/timers.py): hours or days, not retry hops.
--
-- One row per order waiting for a time: a scheduled activation (Activation_Scheduled_At__c) or the
-- next re-check of an order parked for a missing pay method. The fulfillment worker's timer loop
-- takes due rows (FOR UPDATE SKIP LOCKED, so several instances never take one row twice at once)
-- and, in the same statement, moves each row's due_at a lease ahead: a taker that dies before its
-- resume request reached Kafka loses nothing, the row falls due again. The saga replaces the row
-- when it waits again and deletes it when the order moves on; a stale row only sends a resume
-- request the saga ignores (it runs only for orders still parked or scheduled).
ALTER TABLE fulfillment_orders DROP CONSTRAINT IF EXISTS fulfillment_orders_state_check;
ALTER TABLE fulfillment_orders ADD CONSTRAINT fulfillment_orders_state_check
    CHECK (state IN ('received', 'running', 'waiting', 'scheduled', 'parked', 'failed', 'fulfilled'));

CREATE TABLE IF NOT EXISTS fulfillment_timers (
    sf_order_id  varchar(18) PRIMARY KEY REFERENCES fulfillment_orders (sf_order_id) ON DELETE CASCADE,
    due_at       timestamptz NOT NULL,
    reason       text        NOT NULL,   -- scheduled | payment_recheck
    fired        integer     NOT NULL DEFAULT 0,   -- times taken by a timer loop (back-off, diagnosis)
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS fulfillment_timers_due ON fulfillment_timers (due_at);
