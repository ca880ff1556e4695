-- Re-stamps the commit-safe feed's transaction ids after a logical restore (pg_dump/pg_restore,
-- a logical replication cut-over) into another cluster, whose transaction ids are behind the
-- restored ones. Run it once, with every replica of the service stopped:
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f scripts/restamp-after-restore.sql
--     psql "$DATABASE_URL" -c 'VACUUM ANALYZE events'
--
-- The restored ids were handed out by the old cluster and mean nothing in this one, and every
-- restored event is committed. So they all become '0', older than any transaction here, and
-- the feed then orders them by global_position. That still keeps each order's events in
-- sequence order: an event is appended only after the order's earlier events committed, so it
-- took a later position.
--
-- Checkpoints move first, while the old ids still give the feed order. A reader that had read
-- every event stays at the end. A reader that was behind restarts just before its first unread
-- event: it never skips one, and may read again some it had done, which every reader
-- tolerates (projector updates are guarded by sequence; the broker deduplicates the relay's
-- messages within its duplicate window, so let the relay catch up before the dump if you can).
--
-- One transaction: it applies completely or not at all. It refuses to run when the ids are
-- not behind, so running it twice, or by mistake, changes nothing.
BEGIN;

LOCK TABLE events, feed_checkpoints IN ACCESS EXCLUSIVE MODE;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
         WHERE (SELECT max(transaction_id) FROM events) >= pg_snapshot_xmax(pg_current_snapshot())
            OR (SELECT max(transaction_id) FROM feed_checkpoints) >= pg_snapshot_xmax(pg_current_snapshot())
    ) THEN
        RAISE EXCEPTION 'nothing to re-stamp: every stored transaction id is below the next one (%)',
            pg_snapshot_xmax(pg_current_snapshot());
    END IF;
END
$$;

UPDATE feed_checkpoints c
   SET transaction_id = '0',
       global_position = COALESCE(
           (SELECT min(e.global_position) - 1
              FROM events e
             WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)),
           (SELECT max(e.global_position) FROM events e),
           0),
       updated_at = now();

UPDATE events SET transaction_id = '0' WHERE transaction_id <> '0';

COMMIT;
