"""Scheduling: the cluster cache, the policy loop, and its writes to the API server."""
