"""Redis key names: the only module that spells them.

Every key starts with a configurable prefix (default ``gw:``; tests use a unique one each).
The part in braces is the Redis Cluster hash tag: keys that share it share a slot.

=====================================  ======  ==========================================
key                                    type    holds
=====================================  ======  ==========================================
``{u:USER}:acct``                      hash    coins, diamonds, debt, share_rem, cents_rem,
                                               held/hold_day/hold_ring (payout hold),
                                               spend_hour/_hours (daily cap), rl_tokens/
                                               rl_at (rate limiter), daily_limit
``{u:USER}:gift:CLIENT_ID``            string  send_gift receipt (TTL = receipt window)
``{u:USER}:cashout:CLIENT_ID``         hash    one cash-out (pending, then paid or failed)
``{u:USER}:streams``                   set     stream ids the creator owns (bounded)
``{u:USER}:changes``                   hash    the user's bucket of state-changing HTTP
                                               calls (change_rate.lua; TTL: until full)
``{u:USER}:held``                      hash    the user's gifts within the payout hold:
                                               ``CREATOR|DAY|SHARE`` -> coins, ``@day``
``{s:STREAM}:stream``                  hash    creator, state, title, starts, seq, totals
``{s:STREAM}:top``                     zset    top gifters by coins
``{s:STREAM}:feed``                    stream  gift events, entry id ``SEQ-0``
``{s:STREAM}:combo:USER:GIFT``         string  combo counter (TTL = combo window)
``{s:STREAM}:room``                    channel pub/sub channel of the room
``{s:STREAM}:viewers``                 hash    process id -> "count:expires_ms"
``{s:STREAM}:battle``                  hash    the stream's side of its current or last battle
``{s:STREAM}:battle_top``              zset    that side's gifters by coins in the battle
``{s:STREAM}:battle_invite``           hash    the stream's pending invitation (TTL)
``{s:STREAM}:battle_invites``          zset    invitations to the stream: from -> expires ms
``{battle:BATTLE}:result``             string  a finished battle's result JSON (TTL)
``{u:USER}:battle_invite``             string  the stream of the creator's pending battle
                                               invitation (TTL)
``{s:STREAM}:guests``                  hash    the stage: guest -> state, ``n|G`` name,
                                               ``c|G``/``d|G`` coins/diamonds received
``{s:STREAM}:goals``                   hash    the stream's goals and progress (_goals.lua)
``{s:STREAM}:names``                   hash    sender -> display name (leaderboard)
``{u:CREATOR}:fans``                   zset    viewer -> lifetime coins sent to the creator
``{pay:PAYMENT}:payment``              hash    one top-up and what was refunded of it
``{pay:PAYMENT}:refund:REFUND_ID``     hash    one refund (chargeback) of a payment
``{platform}:acct``                    hash    the platform's share (coins)
``{ledger}:log``                       stream  every committed transfer; the archiver trims
                                               what PostgreSQL holds (group ``archiver``)
``{ledger}:archiver``                  string  lease of the active archiver (TTL)
``{ledger}:generation``                string  random marker set once; gone or changed:
                                               Redis lost its data (``watch.py``)
``{ledger}:fence``                     string  written before WAIT (``always+replica``)
``{catalog}:prices``                   hash    gift id -> price in coins, and ``@version``
``{catalog}:versions``                 hash    version -> catalog document (JSON)
``{catalog}:schedule``                 hash    scheduled edit id -> the edit (JSON)
``{catalog}:due``                      zset    scheduled edit id -> when (Redis ms)
=====================================  ======  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "gw:"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def account(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:acct"

    def account_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:acct"

    def user_id_of_account(self, key: str) -> str:
        start = len(self.prefix) + 3
        return key[start : key.index("}", start)]

    def gift_receipt(self, sender_id: str, client_id: str) -> str:
        return f"{self.prefix}{{u:{sender_id}}}:gift:{client_id}"

    def cashout(self, creator_id: str, client_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:cashout:{client_id}"

    def hold_record(self, sender_id: str) -> str:
        return f"{self.prefix}{{u:{sender_id}}}:held"

    def changes(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:changes"

    def creator_streams(self, creator_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:streams"

    def stream(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:stream"

    def leaderboard(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:top"

    def feed(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:feed"

    def combo(self, stream_id: str, sender_id: str, gift_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:combo:{sender_id}:{gift_id}"

    def room_channel(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:room"

    def viewers(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:viewers"

    def battle(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:battle"

    def battle_top(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:battle_top"

    def battle_invite(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:battle_invite"

    def battle_invites(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:battle_invites"

    def creator_battle_invite(self, creator_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:battle_invite"

    def battle_result(self, battle_id: str) -> str:
        return f"{self.prefix}{{battle:{battle_id}}}:result"

    def guests(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:guests"

    def goals(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:goals"

    def names(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:names"

    def fans(self, creator_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:fans"

    def payment(self, payment_id: str) -> str:
        return f"{self.prefix}{{pay:{payment_id}}}:payment"

    def refund(self, payment_id: str, refund_id: str) -> str:
        return f"{self.prefix}{{pay:{payment_id}}}:refund:{refund_id}"

    def refund_pattern(self) -> str:
        return f"{self.prefix}{{pay:*}}:refund:*"

    def payment_pattern(self) -> str:
        return f"{self.prefix}{{pay:*}}:payment"

    def gift_receipt_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:gift:*"

    def cashout_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:cashout:*"

    def platform(self) -> str:
        return f"{self.prefix}{{platform}}:acct"

    def ledger(self) -> str:
        return f"{self.prefix}{{ledger}}:log"

    def archiver_lease(self) -> str:
        return f"{self.prefix}{{ledger}}:archiver"

    def ledger_generation(self) -> str:
        return f"{self.prefix}{{ledger}}:generation"

    def ledger_fence(self) -> str:
        return f"{self.prefix}{{ledger}}:fence"

    def catalog(self) -> str:
        return f"{self.prefix}{{catalog}}:prices"

    def catalog_versions(self) -> str:
        return f"{self.prefix}{{catalog}}:versions"

    def catalog_schedule(self) -> str:
        return f"{self.prefix}{{catalog}}:schedule"

    def catalog_due(self) -> str:
        return f"{self.prefix}{{catalog}}:due"
