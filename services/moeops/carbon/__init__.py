"""Carbon accounting: energy per workload, grid carbon intensity, and the ledger that turns one into the other."""
