"""The controller's half of `gpufleet whatif`: a live cluster captured as a snapshot."""
