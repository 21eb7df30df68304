-- Leader leases' terms (adapters.leader_lease): the fencing token of each lease.
--
-- The lease itself is a PostgreSQL session advisory lock (no table). This row counts its terms:
-- whoever takes the lock over runs begin_term (term + 1) before it starts working, and a writer
-- whose work must stop when leadership moves checks, first in its transaction, that its term is
-- still the current one (SELECT ... FOR SHARE, so a takeover waits for the write in flight).
-- released_at is set when the holder let go cleanly, after everything it ran had stopped; a
-- successor then needs no takeover grace. One row per lease name, e.g. sf-cdc:<subscriber>@<org>.
CREATE TABLE IF NOT EXISTS leader_terms (
    lease        text        PRIMARY KEY,
    term         bigint      NOT NULL,
    holder       text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz
);
