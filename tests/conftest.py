"""Shared fixtures: the tiny backbone (built once per session) and small synthetic references."""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as the smite command sets it; before torch computes anything

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_backbone():
    from smite_core.model.backbone import load_backbone

    return load_backbone("tiny", device="cpu", dtype="fp32")


def blob_reference(size=64, seed=0):
    """One synthetic reference: image [H,W,3] with three coloured shapes and their label map [H,W]."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(size, size, 3, generator=g) * 0.2
    labels = torch.zeros(size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = size // 2
    disk = (yy - c) ** 2 + (xx - c) ** 2 < (size // 4) ** 2
    labels[disk] = 1
    labels[(yy < size // 4) & (xx > size // 2)] = 2
    image[labels == 1] = torch.tensor([0.9, 0.2, 0.2])
    image[labels == 2] = torch.tensor([0.2, 0.3, 0.9])
    return image, labels
