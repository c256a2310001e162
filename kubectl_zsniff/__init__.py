"""kubectl-zsniff: capture a Kubernetes pod's traffic with pod names inside the capture."""

__version__ = "0.1.0"
