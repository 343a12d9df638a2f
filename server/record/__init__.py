"""The durable record: every committed ledger transfer, archived into PostgreSQL once."""
