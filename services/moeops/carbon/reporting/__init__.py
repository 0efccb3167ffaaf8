"""`moeops carbon report NAME`: one workload's energy and emissions per stage (`report` is pure; `report_plot` draws
the PNG; `report_cli` reads the totals from the bus)."""
