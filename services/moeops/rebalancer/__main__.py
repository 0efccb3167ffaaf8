"""`python -m moeops.rebalancer`: the rebalancer service (see cli.py)."""

from .cli import main

main()
