"""The discrete-event simulator: replays traces through `policies` on simpy time."""
