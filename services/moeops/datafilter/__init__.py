"""The data filter (issue 21), level 1: exact and near-duplicate removal of a jsonl corpus, as stages of N
parallel tasks that exchange files in a work folder (datatrove's multi-stage MinHash pipeline):

    signatures (N) -> buckets (N) -> clusters (1) -> filter (N)

Task i of a stage reads only its own inputs and writes outputs named by stage and task, so the operator can run
each stage as an Indexed Job (completion index = task) and `moeops data filter` runs the same stages locally as
processes (moeops.datafilter.local). The pure parts (normalise, minhash, buckets, clusters, ranges) do no I/O;
stages.py reads and writes the files. Nothing here imports torch or moeops.data (whose package imports torch):
a task starts in a fraction of a second.
"""
