"""Weights on disk: safe readers and strict loaders, the weights registry, training checkpoints."""
