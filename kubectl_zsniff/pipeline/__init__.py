"""From tcpdump's pcap streams to the bytes each sink wants: lanes, naming, limits, fan-out
(output.py), and the addresses of a captured frame (packetaddr.py)."""
