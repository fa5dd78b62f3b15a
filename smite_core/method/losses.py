"""Class weighting shared by learning's ``L_CE`` and guidance's ``E_track`` (docs/method.md 3.4, 8.1).

Kept apart from ``learn`` so that inference (``guidance``) never imports training code.
"""

from __future__ import annotations

import torch


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Background 1; present foreground class c: N_fg / N_c; absent classes 0. ``labels``: ids 0..K-1, any shape."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes).float()
    weights = torch.zeros(num_classes, device=labels.device)
    weights[0] = 1.0
    foreground = counts[1:].sum()
    present = counts[1:] > 0
    weights[1:][present] = foreground / counts[1:][present]
    return weights
