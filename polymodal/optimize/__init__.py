"""Optimization on top of training: hyper-parameter search (`tune`); smaller and faster models: compress (pruning,
int8) and export (ONNX with the preprocessing inside)."""
