-- The order fulfillment saga's state (workers/fulfillment, adapters/saga_store.py).
--
-- One row per Salesforce Order the saga has seen, one row per step it has attempted, and an
-- append-only history that `fleet orders show` prints as the order's timeline. Every write of one
-- delivery's final state happens in one transaction together with its inbox row (0001), so a
-- redelivered request either sees the whole outcome or none of it. Progress inside a delivery
-- (an external id the moment it is known) commits on its own, earlier, so a crash cannot hide it.

CREATE TABLE IF NOT EXISTS fulfillment_orders (
    sf_order_id      varchar(18) PRIMARY KEY,
    sf_account_id    varchar(18),
    order_type       text,                       -- Internet | SIM | VPN (after validation)
    state            text        NOT NULL,       -- received | running | waiting | parked | failed | fulfilled
    current_step     text,                       -- the first unfinished step (NULL when fulfilled)
    whmcs_client_id  integer,
    whmcs_order_id   integer,
    -- the SIM's phone number, unique so two orders can never register the same Freebit account
    sim_account      text        UNIQUE,
    error_code       text,
    error_message    text,
    plan             jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- validated snapshot of the order
    requests         integer     NOT NULL DEFAULT 0,            -- activation requests handled
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT fulfillment_orders_state_check
        CHECK (state IN ('received', 'running', 'waiting', 'parked', 'failed', 'fulfilled'))
);
CREATE INDEX IF NOT EXISTS fulfillment_orders_state ON fulfillment_orders (state, updated_at);
-- PaymentMethodChanged resumes the parked orders of one WHMCS client
CREATE INDEX IF NOT EXISTS fulfillment_orders_parked_client
    ON fulfillment_orders (whmcs_client_id) WHERE state = 'parked';

CREATE TABLE IF NOT EXISTS fulfillment_steps (
    sf_order_id        varchar(18) NOT NULL REFERENCES fulfillment_orders (sf_order_id) ON DELETE CASCADE,
    step               text        NOT NULL,
    seq                smallint    NOT NULL,   -- position in the order type's plan
    status             text        NOT NULL,   -- pending | running | waiting | done | skipped | parked | failed | compensated
    attempts           integer     NOT NULL DEFAULT 0,
    external_ids       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_error_code    text,
    last_error_message text,
    started_at         timestamptz,            -- first attempt of the current window (reset on resume)
    last_attempt_at    timestamptz,
    finished_at        timestamptz,
    PRIMARY KEY (sf_order_id, step)
);

CREATE TABLE IF NOT EXISTS fulfillment_history (
    id           bigserial   PRIMARY KEY,
    sf_order_id  varchar(18) NOT NULL REFERENCES fulfillment_orders (sf_order_id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    step         text,
    kind         text        NOT NULL,  -- requested | step_done | step_waiting | step_error | parked | failed | ...
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS fulfillment_history_order ON fulfillment_history (sf_order_id, id);
