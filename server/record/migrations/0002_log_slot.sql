-- Cluster mode: every hash slot has its own ledger log ({~N}:log), and two slots may give
-- two transfers the same entry id "MS-SEQ". A transfer's key is therefore its log and its
-- entry id: log_slot is the slot of the log (-1: the single-node {ledger}:log, which is
-- every transfer recorded before this migration).
ALTER TABLE transfers ADD COLUMN log_slot integer NOT NULL DEFAULT -1
    CHECK (log_slot BETWEEN -1 AND 16383);
ALTER TABLE postings ADD COLUMN log_slot integer NOT NULL DEFAULT -1;

ALTER TABLE postings DROP CONSTRAINT postings_log_ms_log_seq_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_pkey;
ALTER TABLE transfers DROP CONSTRAINT transfers_pkey;
ALTER TABLE transfers ADD PRIMARY KEY (log_slot, log_ms, log_seq);
ALTER TABLE postings ADD PRIMARY KEY (log_slot, log_ms, log_seq, line);
ALTER TABLE postings ADD FOREIGN KEY (log_slot, log_ms, log_seq) REFERENCES transfers;

-- The lines of one transfer are those of one (log_slot, log_ms, log_seq).
CREATE OR REPLACE FUNCTION postings_sum_to_zero() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT log_slot, log_ms, log_seq, sum(amount) AS total INTO bad
      FROM new_postings GROUP BY log_slot, log_ms, log_seq HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'postings of transfer %/%-% sum to %, not 0',
            bad.log_slot, bad.log_ms, bad.log_seq, bad.total;
    END IF;
    RETURN NULL;
END
$$;

-- Cluster gifts are two transfers, a debit in the sender's slot and a credit in the
-- creator's: between them the coins are in transit (an account of no user).
ALTER TABLE postings DROP CONSTRAINT postings_account_check;
ALTER TABLE postings ADD CONSTRAINT postings_account_check CHECK (account IN (
    'coins', 'diamonds', 'debt', 'platform', 'provider', 'payouts', 'paid_out', 'transit'));
ALTER TABLE postings DROP CONSTRAINT postings_check;
ALTER TABLE postings ADD CONSTRAINT postings_check CHECK (
    (user_id IS NULL) = (account IN ('platform', 'provider', 'payouts', 'paid_out', 'transit')));
