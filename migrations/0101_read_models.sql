-- Relational read models of orders, built by the `orders` projector from the commit-safe feed
-- (docs/contract.md §§3.2 and 7). They serve the /internal queries, so payment-service,
-- blockchain-service and reconciliation never load an aggregate from its events.
--
-- The rows are derived data: `order-service replay` (or `projections::orders::rebuild`) can drop
-- and rebuild them from the events at any time, and must yield exactly the same rows. So every
-- value here comes from an event's payload (never from now() or a sequence), and each row
-- carries the sequence of the last event applied to it, so that applying an event twice changes
-- nothing (`UPDATE ... WHERE last_sequence < $sequence`).

-- One row per order: the order object of docs/contract.md §3.2, plus what the queries filter on.
CREATE TABLE order_read
(
    order_id          uuid PRIMARY KEY,
    order_number      text        NOT NULL,
    tenant_id         text        NOT NULL,
    user_id           text        NOT NULL,
    event_id          uuid        NOT NULL,
    -- The normative wire name (PENDING, PAID, PARTIALLY_REFUNDED, ...).
    status            text        NOT NULL,
    subtotal_cents    bigint      NOT NULL,
    fees_cents        bigint      NOT NULL,
    tax_cents         bigint      NOT NULL,
    total_cents       bigint      NOT NULL,
    currency          text        NOT NULL,
    payment_intent_id text,
    expires_at        timestamptz NOT NULL,
    event_starts_at   timestamptz,
    created_at        timestamptz NOT NULL,
    -- When the last event happened (its own clock), as the aggregate reports it.
    updated_at        timestamptz NOT NULL,
    paid_at           timestamptz,
    refunded_cents    bigint      NOT NULL DEFAULT 0,
    -- An open or lost dispute locks refunds; DisputeClosed carries the lock after it.
    refunds_locked    boolean     NOT NULL DEFAULT false,
    -- Number of line items (order_item_read rows), and of tickets issued across them.
    item_count        integer     NOT NULL,
    ticket_count      integer     NOT NULL DEFAULT 0,
    -- Set by OrderArchived; the row stays so that lookups by id keep answering.
    archived          boolean     NOT NULL DEFAULT false,
    -- The sequence of the last event applied: the order's version, and the idempotency guard.
    last_sequence     bigint      NOT NULL CHECK (last_sequence >= 1)
);

-- without-tickets: "status = $1 AND ticket_count = 0 AND paid_at <= cutoff ORDER BY paid_at".
-- Partial, because orders that have tickets (most paid ones) never match.
CREATE INDEX order_read_without_tickets_idx ON order_read (status, paid_at)
    WHERE ticket_count = 0 AND NOT archived;

-- Tenant-scoped lookups and listings.
CREATE INDEX order_read_tenant_idx ON order_read (tenant_id, created_at);

-- One row per line item, in the order the items were placed, with the tickets issued against it
-- (blockchain-service mints from this list).
CREATE TABLE order_item_read
(
    order_id         uuid    NOT NULL REFERENCES order_read (order_id) ON DELETE CASCADE,
    item_id          uuid    NOT NULL,
    -- Position of the item in OrderCreated, so answers list items in the order they were placed.
    position         integer NOT NULL,
    ticket_type_id   uuid    NOT NULL,
    quantity         integer NOT NULL,
    unit_price_cents bigint  NOT NULL,
    -- Ticket ids in the order they were issued; TicketsIssued carries only tickets new to the order.
    ticket_ids       text[]  NOT NULL DEFAULT '{}',
    PRIMARY KEY (order_id, item_id)
);
