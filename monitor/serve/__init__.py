"""The daemon's I/O shell and its faces: the event loop, websocket fan-out, REST, /metrics and the dashboard."""
