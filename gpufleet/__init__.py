"""The `gpufleet` command: one command tree that the simulator, the trace tools and the
controller plug their subcommands into. No host owns it, so none imports another."""
