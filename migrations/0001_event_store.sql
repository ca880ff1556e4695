-- The event store: postgres-es's `events` and `snapshots` tables, plus the columns of the
-- commit-safe feed (docs/contract.md §7).
--
-- postgres-es inserts (aggregate_type, aggregate_id, sequence, event_type, event_version,
-- payload, metadata) and reads them back by aggregate; the extra columns below get their values
-- from defaults, so the framework persists and loads unchanged.
--
-- * global_position: a total order over all events, for feed readers and checkpoints.
-- * transaction_id: the writing transaction's id. Rows become visible in commit order, not in
--   global_position order, so readers only read rows whose transaction is older than every
--   transaction still running (pg_snapshot_xmin of the current snapshot), ordered by
--   (transaction_id, global_position). That never skips a late commit.
-- * recorded_at: when the row was written, for history and lag reports.
--
-- The primary key is the optimistic lock: two commands appending the same sequence to one order
-- collide on it, and postgres-es reports any unique violation as a conflict, so this table must
-- carry no other unique constraint.
CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         jsonb                        NOT NULL,
    metadata        jsonb                        NOT NULL,
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The feed's read path: "transaction_id < fence ORDER BY transaction_id, global_position".
CREATE INDEX events_feed_idx ON events (transaction_id, global_position);

-- Unused while orders have short histories (no snapshots are taken), kept so that postgres-es's
-- snapshot store can be enabled without a schema change.
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          jsonb                                NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
