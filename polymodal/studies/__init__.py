"""Studies: experiments that train many models through the facade (`MultimodalPredictor`) and compare them.

`compare` (every fusion against the unimodal baselines and their ensembles, over seeds), `tune` (an Optuna
search), the ensembles they build, and their reports. They sit above the predictor; nothing below imports them.
"""
