"""Writing transfers into the record: one transaction per batch, keyed by the log entry id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection

from server.record.postings import RecordError, Transfer

_INSERT_TRANSFERS = """
INSERT INTO transfers (log_ms, log_seq, type, at, from_user, to_user, client_id, payment_id,
                       stream_id, gift_id, count, fields)
SELECT m, s, t, to_timestamp(m / 1000.0), fu, tu, c, p, st, g, n, f::jsonb
  FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],
              %s::text[], %s::text[], %s::text[], %s::integer[], %s::text[])
       AS u(m, s, t, fu, tu, c, p, st, g, n, f)
ON CONFLICT (log_ms, log_seq) DO NOTHING
RETURNING log_ms, log_seq
"""

_INSERT_POSTINGS = """
INSERT INTO postings (log_ms, log_seq, line, user_id, account, amount)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::smallint[], %s::text[], %s::text[],
                     %s::bigint[])
"""

_STORED_FIELDS = """
SELECT log_ms, log_seq, fields FROM transfers
 WHERE (log_ms, log_seq) IN (SELECT * FROM unnest(%s::bigint[], %s::bigint[]))
"""


async def record_transfers(conn: AsyncConnection[Any], transfers: Sequence[Transfer]) -> int:
    """Record ``transfers`` and their postings in one transaction; return how many were new.

    A transfer already recorded under its entry id is a replay (an archiver that died
    between the commit and its XACK): it is skipped, after checking that the stored entry
    is the same one. A different entry under a recorded id (a Redis that lost acknowledged
    writes and reused their ids) raises ``RecordError`` and records nothing.
    """
    if not transfers:
        return 0
    async with conn.transaction():
        cursor = await conn.execute(
            _INSERT_TRANSFERS,
            [
                [t.log_ms for t in transfers],
                [t.log_seq for t in transfers],
                [t.type for t in transfers],
                [t.text("from") for t in transfers],
                [t.text("to") for t in transfers],
                [t.text("client_id") for t in transfers],
                [t.text("payment") for t in transfers],
                [t.text("stream") for t in transfers],
                [t.text("gift") for t in transfers],
                [t.count for t in transfers],
                [orjson.dumps(t.fields).decode() for t in transfers],
            ],
        )
        new = {(int(ms), int(seq)) for ms, seq in await cursor.fetchall()}
        replays = [t for t in transfers if (t.log_ms, t.log_seq) not in new]
        if replays:
            await _check_replays(conn, replays)
        lines = [(t, i, p) for t in transfers if (t.log_ms, t.log_seq) in new
                 for i, p in enumerate(t.postings)]  # fmt: skip
        if lines:
            await conn.execute(
                _INSERT_POSTINGS,
                [
                    [t.log_ms for t, _, _ in lines],
                    [t.log_seq for t, _, _ in lines],
                    [i for _, i, _ in lines],
                    [p.user_id for _, _, p in lines],
                    [p.account.value for _, _, p in lines],
                    [p.amount for _, _, p in lines],
                ],
            )
    return len(new)


async def _check_replays(conn: AsyncConnection[Any], replays: Sequence[Transfer]) -> None:
    cursor = await conn.execute(
        _STORED_FIELDS, [[t.log_ms for t in replays], [t.log_seq for t in replays]]
    )
    stored = {(int(ms), int(seq)): fields for ms, seq, fields in await cursor.fetchall()}
    for t in replays:
        if stored.get((t.log_ms, t.log_seq)) != dict(t.fields):
            raise RecordError(
                f"{t.transfer_id}: the record holds a different entry under this id "
                "(did Redis lose acknowledged writes?)"
            )
