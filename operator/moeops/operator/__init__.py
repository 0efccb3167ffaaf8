"""The moeops operator: pure reconcile logic (planning, children, status) and thin kopf handlers over it."""
