"""Pure capture-file formats: classic pcap, pcapng, and telling them apart.

Nothing here knows about Kubernetes, the exec websocket, the CLI or the sinks (a unit test
checks the imports): bytes in, events or bytes out.
"""
