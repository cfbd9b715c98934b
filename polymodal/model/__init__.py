"""The model: network, inference engine and the model folder."""
