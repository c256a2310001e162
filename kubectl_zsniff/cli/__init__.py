"""The command line: the click app (app.py) and everything the user reads on stderr (console.py).

The only package that imports click or rich's console, and the only one that writes to the
terminal. Kept light: `--help` loads neither the kubernetes client, rich nor pyshark."""
