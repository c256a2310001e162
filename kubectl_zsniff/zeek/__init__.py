"""Zeek logs: reading TSV and JSON, adding Kubernetes names to both ends, writing (logs.py)."""
