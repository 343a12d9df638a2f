"""The Redis ledger: Lua scripts (``scripts/*.lua``) and the Python wrapper that runs them.

The scripts are the one and only ledger: every balance change happens inside one of them,
atomically, in one round trip. Python never re-checks or re-computes a balance.
"""
