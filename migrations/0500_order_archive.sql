-- The archive of the order read models (docs/contract.md §8, archiving job). The archiving job
-- sends ArchiveOrder to terminal orders past a configurable age; when the `orders` projector
-- applies OrderArchived it moves the order's rows here, out of the hot tables that every
-- `/internal` query and every job scans. The by-id lookups read both, so an archived order
-- still answers.
--
-- Same columns, in the same order, as the hot tables (the move is `INSERT ... SELECT *`): a
-- migration that adds a column to `order_read` or `order_item_read` adds it here too. Derived
-- data like the hot tables: the projector's reset empties both, and a rebuild moves the same
-- orders here again.

CREATE TABLE order_read_archive
(
    LIKE order_read INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (order_id)
);

-- Tenant-scoped listings of old orders.
CREATE INDEX order_read_archive_tenant_idx ON order_read_archive (tenant_id, created_at);

CREATE TABLE order_item_read_archive
(
    LIKE order_item_read INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (order_id, item_id),
    FOREIGN KEY (order_id) REFERENCES order_read_archive (order_id) ON DELETE CASCADE
);
