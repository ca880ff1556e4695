-- Checkpoints of every reader of the commit-safe feed (projectors, the outbox relay, jobs,
-- replays). A checkpoint is the feed position of the last event a reader finished:
-- (transaction_id, global_position), the feed's own order. Projectors update their checkpoint in
-- the same transaction as their read-model rows, so the two never disagree.
CREATE TABLE feed_checkpoints
(
    consumer        text PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT '0'::xid8,
    global_position bigint      NOT NULL DEFAULT 0,
    events_total    bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
