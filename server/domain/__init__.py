"""The pure domain core: gifts, accounts, streams, money rules, errors and limits.

Nothing in this package performs I/O or imports asyncio or redis.
"""
