"""One capture run: tcpdump in each pod streamed into the pipeline, limits, stopping and
verifying (run.py), and the session that ties target, names, sinks and injection (session.py)."""
