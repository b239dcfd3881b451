"""The Kubernetes controller: runs the same `policies` objects against a live cluster."""
