"""``GET /``: where a person who opens the server's address in a browser is pointed.

With the demo pages on, a page that links them; otherwise (production) a JSON pointer to
the API and its documentation.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

DOCS = "docs/protocol.md in the giftwire source: the WebSocket protocol and the HTTP API"

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" href="data:,">
  <title>giftwire</title>
  <link rel="stylesheet" href="/demo/giftwire.css">
</head>
<body>
  <header class="topbar"><span class="brand">gift<b>wire</b></span></header>
  <div class="notice">
    <h2>giftwire is running</h2>
    <p>Demo pages: <a href="/demo/viewer.html?stream=demo">viewer</a> ·
       <a href="/demo/creator.html?stream=demo">creator dashboard</a> ·
       <a href="/demo/overlay.html?stream=demo&amp;test=1">OBS overlay</a>
       (<a href="/demo/">all</a>).</p>
    <p>Each page needs a token in the fragment, <code>#token=…</code>: the terminal
       running <code>giftwire demo</code> printed ready-made links, and
       <code>giftwire token --user NAME</code> makes more.</p>
    <p>API: <a href="/api/catalog">/api/catalog</a> · <a href="/healthz">/healthz</a> ·
       <a href="/readyz">/readyz</a> · <a href="/metrics">/metrics</a></p>
  </div>
</body>
</html>
"""


async def home_page(request: Request) -> Response:
    return HTMLResponse(_PAGE)


async def home_json(request: Request) -> Response:
    return JSONResponse(
        {
            "service": "giftwire",
            "docs": DOCS,
            "websocket": "/ws/streams/{stream_id}",
            "api": "/api/catalog",
            "health": "/healthz",
            "ready": "/readyz",
        }
    )
