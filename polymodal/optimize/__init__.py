"""Optimization on top of training: hyper-parameter search (`tune`)."""
