"""A local stand-in for a Kubernetes cluster, for tests.

An aiohttp API server (``server.py``) whose pods are Linux network namespaces running real
processes (``runtime.py``).  Start it with ``python -m tests.cluster up`` and drive it from tests
through ``handle.ClusterHandle``.  Real kubectl is the judge of its fidelity.
"""
