"""Side-by-side benchmarks of giftwire against its limits (``python -m benchmarks run``).

See ``docs/benchmarks.md`` for what is measured, how, and the latest numbers."""
