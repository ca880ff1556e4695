-- Inbound messages (docs/contract.md §6): the inbox that makes their effect exactly-once, and the
-- per-order holds of the dead-letter stream.

-- Ids of inbound messages whose effect is recorded. A subscriber checks it before handling and
-- inserts after the handler succeeded; a crash between the effect and the insert is covered by
-- the aggregate's natural keys (the redelivery decides "nothing to do"). JetStream's duplicate
-- window only drops re-publishes with the same Nats-Msg-Id for a few minutes; this table also
-- catches the same `id` published again under another Nats-Msg-Id, or much later. Rows are kept
-- far longer than that window (INBOX_RETENTION_HOURS) and then purged by processed_at.
CREATE TABLE inbox
(
    message_id      text PRIMARY KEY,
    subject         text        NOT NULL,
    order_id        uuid,
    stream_sequence bigint      NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX inbox_processed_at_idx ON inbox (processed_at);

-- One row per parked message of an order. An order is held while it has rows: later messages
-- for it are parked behind the first one instead of being applied out of order, while other
-- orders keep flowing. `position` is the message's place in the order's queue; a message that
-- is redriven and parked again keeps its place. `redriving` marks messages republished by a
-- redrive and not handled yet: they may pass the hold in queue order. A row is deleted once its
-- message is handled (or turned out to be a duplicate).
CREATE SEQUENCE dlq_hold_position;

CREATE TABLE dlq_holds
(
    dlq_stream text        NOT NULL,
    dlq_seq    bigint      NOT NULL,
    order_id   uuid        NOT NULL,
    position   bigint      NOT NULL,
    redriving  boolean     NOT NULL DEFAULT false,
    error      text        NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_stream, dlq_seq)
);

CREATE INDEX dlq_holds_order_idx ON dlq_holds (dlq_stream, order_id, position);
