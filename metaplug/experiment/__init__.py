"""Experiments: configuration, the training loop, checkpoints, metrics and evaluation.

Backend-neutral: components are looked up by name in the plugin registry, so the
same configuration runs on any backend that implements the chosen algorithm.
"""
