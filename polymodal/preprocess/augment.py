"""Light, label-preserving image augmentation, applied to training batches only (torch, on the batch's device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_images(x: torch.Tensor, max_shift: float = 0.1, jitter: float = 0.1) -> torch.Tensor:
    """Random translation (up to `max_shift` of the side) and brightness/contrast jitter, per sample.

    No flips: they change the meaning of digits and text in images.
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (torch.rand(n, 2, device=x.device, dtype=x.dtype) * 2 - 1) * 2 * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    scale = 1 + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * jitter
    shift = (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * jitter
    return x * scale + shift
