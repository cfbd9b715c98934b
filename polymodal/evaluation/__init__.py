"""Measuring a model that exists: metric tables, robustness to missing and noisy inputs, per-group scores, input
subsets, and the HTML building blocks of the reports. Trains nothing (studies that train live in `studies`)."""
