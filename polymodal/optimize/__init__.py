"""Making models smaller and faster: compress (pruning, int8) and export (ONNX with the preprocessing inside)."""
