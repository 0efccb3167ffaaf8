"""The moeops API: typed custom-resource models (the one source of truth for the CRDs) and the CRD generator.

This package is the bottom layer: it imports no other moeops code and no I/O library.
"""

GROUP = "moeops.dev"
"""API group of every moeops custom resource."""
