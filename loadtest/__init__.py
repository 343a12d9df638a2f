"""Load generation for giftwire: Locust users (``locustfile.py``) and a high-concurrency
asyncio generator (``python -m loadtest run``). See the README's "Load testing" section."""
