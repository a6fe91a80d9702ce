"""Training runs: the checkpoints uploaded with a run name and step, and their trajectory over the steps."""
