-- Every posting names a recorded transfer: checked once per INSERT statement, in the same
-- statement-level trigger that checks the lines sum to zero, instead of by a foreign key.
-- The foreign key ran one row-level check (a SELECT ... FOR KEY SHARE on transfers) per
-- posting: three per gift, a third of PostgreSQL's CPU per archived transfer. It guarded
-- nothing else: both tables are append-only (UPDATE, DELETE and TRUNCATE raise), so a
-- transfer cannot vanish from under its postings.
ALTER TABLE postings DROP CONSTRAINT postings_log_slot_log_ms_log_seq_fkey;

CREATE OR REPLACE FUNCTION postings_sum_to_zero() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    -- One index probe per transfer (LATERAL ... LIMIT 1 keeps it a probe: an anti-join
    -- could hash the whole of transfers for every batch).
    SELECT p.log_slot, p.log_ms, p.log_seq INTO bad
      FROM (SELECT DISTINCT log_slot, log_ms, log_seq FROM new_postings) AS p
      LEFT JOIN LATERAL (SELECT 1 AS found FROM transfers AS t
                          WHERE t.log_slot = p.log_slot AND t.log_ms = p.log_ms
                            AND t.log_seq = p.log_seq
                          LIMIT 1) AS t ON true
     WHERE t.found IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            CONSTRAINT = 'postings_transfer_exists',
            MESSAGE = format('postings_transfer_exists: a posting names transfer %s/%s-%s, '
                             'which is not recorded', bad.log_slot, bad.log_ms, bad.log_seq);
    END IF;
    SELECT log_slot, log_ms, log_seq, sum(amount) AS total INTO bad
      FROM new_postings GROUP BY log_slot, log_ms, log_seq HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'postings of transfer %/%-% sum to %, not 0',
            bad.log_slot, bad.log_ms, bad.log_seq, bad.total;
    END IF;
    RETURN NULL;
END
$$;
