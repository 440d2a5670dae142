"""The team's view: a live read-only page, an HTTP API and Prometheus metrics (docs/web.md).

hosts.py   which hosts are shown, and a core per host (the host registry plugs in here)
adapters.py reads the core does not offer yet (queue rows, event replay, daemon up)
live.py    one feed per host: state after every event, fanned out to every client
sse.py     /api/v1/events: server-sent events with Last-Event-ID replay
metrics.py /metrics
app.py     the Starlette app: routes, JSON errors, the page's assets
server.py  serve_web(): uvicorn inside our task group, until cancelled
demo.py    `web --demo`: the documents' scenes on fake GPUs, with simulated activity
"""
