"""`python -m moeops.carbon agent|aggregator`: see cli.py."""

from .cli import main

main()
