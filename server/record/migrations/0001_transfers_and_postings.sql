-- The durable record: every committed ledger transfer and its double-entry postings.
-- docs/ledger.md ("The durable record") explains the accounts and why.

-- One row per entry of {ledger}:log. Its key is the entry id "MS-SEQ" (Redis' clock in ms
-- when the script committed, and a counter within that ms), which is also the transfer id
-- in every receipt. A second insert of the same id is a replay, never a second transfer.
CREATE TABLE transfers (
    log_ms      bigint      NOT NULL CHECK (log_ms >= 0),
    log_seq     bigint      NOT NULL CHECK (log_seq >= 0),
    type        text        NOT NULL,
    at          timestamptz NOT NULL,
    -- The parties (the entry's "from" and "to"): a wallet's history is every transfer it is
    -- a party to, even one that moved nothing into it (a 1-coin gift earns 0 diamonds).
    from_user   text,
    to_user     text,
    client_id   text,
    payment_id  text,
    stream_id   text,
    gift_id     text,
    count       integer,
    -- The whole entry as Redis holds it, so that fields a later script adds are kept before
    -- any column exists for them.
    fields      jsonb       NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log_ms, log_seq)
);

CREATE INDEX transfers_by_stream ON transfers (stream_id, log_ms) WHERE stream_id IS NOT NULL;
CREATE INDEX transfers_from_user ON transfers (from_user, log_ms DESC, log_seq DESC)
    WHERE from_user IS NOT NULL;
CREATE INDEX transfers_to_user ON transfers (to_user, log_ms DESC, log_seq DESC)
    WHERE to_user IS NOT NULL;

-- Each transfer moves value between accounts; its postings sum to zero. All amounts are in
-- one unit, the coin: a diamond is worth one coin of the gift it came from. A user's debt
-- account holds minus what the user owes.
CREATE TABLE postings (
    log_ms  bigint   NOT NULL,
    log_seq bigint   NOT NULL,
    line    smallint NOT NULL,
    user_id text,
    account text     NOT NULL CHECK (account IN (
        'coins', 'diamonds', 'debt', 'platform', 'provider', 'payouts', 'paid_out')),
    amount  bigint   NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (log_ms, log_seq, line),
    FOREIGN KEY (log_ms, log_seq) REFERENCES transfers,
    -- Users hold coins, diamonds and debt; the platform's own accounts belong to no user.
    CHECK ((user_id IS NULL) = (account IN ('platform', 'provider', 'payouts', 'paid_out')))
);

CREATE INDEX postings_by_user ON postings (user_id, log_ms DESC, log_seq DESC)
    WHERE user_id IS NOT NULL;

-- Double entry, enforced by the database: the lines of every transfer inserted by one
-- statement sum to zero, or the statement (and its transaction) fails.
CREATE FUNCTION postings_sum_to_zero() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT log_ms, log_seq, sum(amount) AS total INTO bad
      FROM new_postings GROUP BY log_ms, log_seq HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'postings of transfer %-% sum to %, not 0',
            bad.log_ms, bad.log_seq, bad.total;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER postings_sum_to_zero AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_sum_to_zero();

-- The record is append-only: a correction is a new transfer, never an edit.
CREATE FUNCTION record_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
END
$$;

CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION record_is_append_only();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION record_is_append_only();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION record_is_append_only();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION record_is_append_only();

-- Balances per account over everything archived.
CREATE VIEW account_balances AS
    SELECT user_id, account, sum(amount)::bigint AS balance, count(*) AS postings
      FROM postings GROUP BY user_id, account;
