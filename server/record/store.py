"""Writing transfers into the record: one transaction per batch, keyed by the log entry id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection

from server.record.postings import RecordError, Transfer

# Each batch travels as one JSON document per table (orjson on our side, jsonb_to_recordset
# on PostgreSQL's): an order of magnitude less client CPU than arrays of text, which psycopg
# escapes element by element.
_INSERT_TRANSFERS = """
INSERT INTO transfers (log_slot, log_ms, log_seq, type, at, from_user, to_user, client_id,
                       payment_id, stream_id, gift_id, count, fields)
SELECT ls, m, s, t, to_timestamp(m / 1000.0), fu, tu, c, p, st, g, n, f
  FROM jsonb_to_recordset(%s::jsonb)
       AS u(ls integer, m bigint, s bigint, t text, fu text, tu text, c text, p text, st text,
            g text, n integer, f jsonb)
ON CONFLICT (log_slot, log_ms, log_seq) DO NOTHING
RETURNING log_slot, log_ms, log_seq
"""

_INSERT_POSTINGS = """
INSERT INTO postings (log_slot, log_ms, log_seq, line, user_id, account, amount)
SELECT ls, m, s, l, u, a, v
  FROM jsonb_to_recordset(%s::jsonb)
       AS r(ls integer, m bigint, s bigint, l smallint, u text, a text, v bigint)
"""

_COPY_POSTINGS = (
    "COPY postings (log_slot, log_ms, log_seq, line, user_id, account, amount) FROM STDIN"
)

_STORED_FIELDS = """
SELECT log_slot, log_ms, log_seq, fields FROM transfers
 WHERE (log_slot, log_ms, log_seq)
       IN (SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::bigint[]))
"""


def _key(t: Transfer) -> tuple[int, int, int]:
    return (t.log_slot, t.log_ms, t.log_seq)


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
        rows = [
            {"ls": t.log_slot, "m": t.log_ms, "s": t.log_seq, "t": t.type, "fu": f.get("from"),
             "tu": f.get("to"), "c": f.get("client_id"), "p": f.get("payment"),
             "st": f.get("stream"), "g": f.get("gift"), "n": t.count, "f": f}
            for t in transfers
            for f in (t.fields,)
        ]  # fmt: skip
        cursor = await conn.execute(_INSERT_TRANSFERS, [orjson.dumps(rows).decode()])
        new = {(int(ls), int(ms), int(seq)) for ls, ms, seq in await cursor.fetchall()}
        replays = [t for t in transfers if _key(t) not in new]
        if replays:
            await _check_replays(conn, replays)
        async with conn.cursor().copy(_COPY_POSTINGS) as copy:
            for t in transfers:
                if _key(t) in new:
                    for i, p in enumerate(t.postings):
                        await copy.write_row(
                            (t.log_slot, t.log_ms, t.log_seq, i, p.user_id, p.account, p.amount)
                        )
    return len(new)


async def _check_replays(conn: AsyncConnection[Any], replays: Sequence[Transfer]) -> None:
    cursor = await conn.execute(
        _STORED_FIELDS,
        [[t.log_slot for t in replays], [t.log_ms for t in replays], [t.log_seq for t in replays]],
    )
    stored = {
        (int(ls), int(ms), int(seq)): fields for ls, ms, seq, fields in await cursor.fetchall()
    }
    for t in replays:
        if stored.get(_key(t)) != dict(t.fields):
            raise RecordError(
                f"{t.transfer_id}: the record holds a different entry under this id "
                "(did Redis lose acknowledged writes?)"
            )
