"""The Kubernetes API: config and auth, the REST client and its errors (client.py), and the
capture container: its spec, injection as an ephemeral container, waiting (container.py)."""
