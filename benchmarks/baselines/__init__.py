"""Baseline servers for the fan-out benchmark, each fed by the same Redis channel."""
