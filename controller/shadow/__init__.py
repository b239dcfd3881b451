"""Shadow policies: other policies decide on the live snapshots without binding."""
