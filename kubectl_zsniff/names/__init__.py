"""Which pod owns an address: the lookup interface every output shares (map.py) and the name book
with its history (book.py). Pure: kube/namewatch.py fills the book from the cluster's watches."""
