"""Training: the step, the loop and its hooks, data, optimizers, metrics."""
