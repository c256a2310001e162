"""The terminal view: packets decoded by tshark through pyshark, one rich line each (render.py,
run as a child process fed by sinks/view.py)."""
