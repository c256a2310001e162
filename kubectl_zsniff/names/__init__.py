"""Which pod owns an address: the lookup interface every output shares (map.py) and the name book
with its history, kept live by watches (book.py)."""
