"""`python -m moeops.serving`: the model server (the same command as `moeops serve`; see serve_cli.py)."""

from __future__ import annotations

from moeops.serving.serve_cli import serve

if __name__ == "__main__":
    serve(prog_name="python -m moeops.serving")
