"""`python -m moeops.carbon agent|aggregator`: see cli.py."""

from moeops.carbon.cli import main

main()
