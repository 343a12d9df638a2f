"""The HTTP/WebSocket edge: Starlette routes, auth, metrics and the wiring of all parts."""
