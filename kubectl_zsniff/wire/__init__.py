"""Bytes from the API server: an RFC 6455 websocket client (websocket.py) and the exec channel
protocol over it (execws.py)."""
