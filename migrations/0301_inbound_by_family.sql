-- Inbound bookkeeping per family (payment, dispute, ticket).

-- Message ids are the producers' own, and two producers may use overlapping id schemes: an id
-- is unique only within its family. Existing rows take the family from their subject
-- (`[prefix.]family.type`).
ALTER TABLE inbox ADD COLUMN family text;
UPDATE inbox SET family = coalesce(substring(subject from '([^.]+)\.[^.]+$'), '');
ALTER TABLE inbox ALTER COLUMN family SET NOT NULL;
ALTER TABLE inbox DROP CONSTRAINT inbox_pkey;
ALTER TABLE inbox ADD PRIMARY KEY (family, message_id);

-- A parked message holds its order's later messages of the same family only: the families are
-- consumed independently anyway, so holding across them bought no order and let a parked
-- ticket message keep a payment or a dispute (money) waiting. NULL: parked before this change,
-- and it still holds every family until it is redriven or discarded.
ALTER TABLE dlq_holds ADD COLUMN family text;
