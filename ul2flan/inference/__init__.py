"""Inference: KV-cache decoding kernels and the Generator over a checkpoint."""
