"""giftwire's demo clients: browser pages (``static/``) and a terminal client.

``python -m client_demo viewer|creator --help``; see ``docs/client-demo.md``.
"""
