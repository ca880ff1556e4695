-- Refunds that were requested and have not finished yet (docs/contract.md §5): the refund saga's
-- to-do list. The `refund_saga` projector inserts a row on RefundRequested and deletes it on
-- OrderRefunded or RefundFailed, in the same transaction as its checkpoint. The refund retry
-- loop claims due rows (FOR UPDATE SKIP LOCKED, then a lease in next_attempt_at), so each
-- refund is attempted by one replica at a time and a replica that dies mid-attempt only delays
-- it until the lease runs out.
CREATE TABLE pending_refunds
(
    refund_id       uuid PRIMARY KEY,
    order_id        uuid        NOT NULL,
    amount_cents    bigint      NOT NULL,
    -- Copied from the RefundRequested event's metadata, so a retried call to payment-service
    -- carries the tenant and correlates with the request that asked for the refund.
    tenant_id       text,
    request_id      text,
    trace_id        text,
    requested_at    timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text
);

CREATE INDEX pending_refunds_due_idx ON pending_refunds (next_attempt_at);
