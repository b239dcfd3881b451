"""What-if forecasts: a cluster snapshot replayed forward under several policies."""
