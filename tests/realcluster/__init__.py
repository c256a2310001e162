"""A real single-node Kubernetes built from source, for the tests (see cluster.py)."""
