"""Rewrites of a model folder into a smaller or portable one: `compress` (pruning, int8) and `export` (ONNX with
the preprocessing inside). They read and write model folders through the facade and the model layer."""
