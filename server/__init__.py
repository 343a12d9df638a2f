"""giftwire: a real-time gifting server for live streams."""

__version__ = "0.1.0"
