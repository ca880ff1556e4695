-- Indexes of the scheduled jobs' scans (`projections::queries::job_candidates`). Each is
-- partial on the statuses its job looks at, so it stays small: most orders are paid, and
-- terminal orders leave the hot table once archived. The scan for paid orders without
-- tickets uses `order_read_without_tickets_idx` of migration 0101.

-- Expiration (past `expires_at`) and reminder (`expires_at` close).
CREATE INDEX order_read_open_expiry_idx ON order_read (expires_at, order_id)
    WHERE status IN ('PENDING', 'RESERVED');

-- Event reminder (`event_starts_at` close).
CREATE INDEX order_read_paid_event_start_idx ON order_read (event_starts_at, order_id)
    WHERE status IN ('PAID', 'PARTIALLY_REFUNDED');

-- Archiving (terminal, last changed long ago).
CREATE INDEX order_read_terminal_updated_idx ON order_read (updated_at, order_id)
    WHERE status IN ('CANCELLED', 'EXPIRED', 'REFUNDED', 'FAILED');
