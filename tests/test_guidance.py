"""Guidance: the DCT and its low-pass mask, the energies, their gradients w.r.t. the latent, the update."""

import math

import pytest
import torch
import torch.nn.functional as F

from smite_core.method.embedding import SegmentEmbedding, build_context
from smite_core.method.guidance import (
    GuidanceEnergy,
    dct3,
    dct_basis,
    energy_reg,
    energy_track,
    guide_latents,
    lowpass_mask,
    step_size,
)
from smite_core.method.inversion import add_noise, encode_frames
from smite_core.method.losses import class_weights
from smite_core.method.was import was_inference
from smite_core.model.unet_pass import unet_forward


@pytest.mark.parametrize("n", [1, 4, 7, 32])
def test_dct_basis_is_orthonormal_dct_ii(n):
    d = dct_basis(n, torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    x = torch.randn(n, dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    for k in range(n):  # the textbook orthonormal DCT-II
        scale = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
        assert torch.allclose((d @ x)[k], scale * (x * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))).sum())


def test_dct3_preserves_energy_and_separates_axes():
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    c = dct3(x)
    assert torch.allclose(c.square().sum(), x.square().sum())  # Parseval
    df, dh, dw = (dct_basis(n, torch.float64) for n in (4, 5, 6))
    back = torch.einsum("af,bh,cw,...abc->...fhw", df, dh, dw, c)
    assert torch.allclose(back, x)
    constant = torch.ones(4, 5, 6, dtype=torch.float64)
    assert torch.allclose(dct3(constant)[0, 0, 0], torch.tensor(math.sqrt(120.0), dtype=torch.float64))
    assert dct3(constant).flatten()[1:].abs().max() < 1e-12


def test_lowpass_mask_keeps_low_spatial_and_all_temporal_frequencies():
    mask = lowpass_mask((3, 64, 64), 0.4)
    assert mask.shape == (3, 64, 64) and mask.all(0).equal(mask.any(0))
    assert mask[0].sum() == 25 * 25  # floor(64 * 0.4) = 25 as in the reference
    assert lowpass_mask((1, 64, 64), 0.999)[0].sum() == 63 * 63
    assert lowpass_mask((2, 2, 2), 0.1).sum() == 2  # at least the DC row and column


def test_energy_reg_ignores_high_frequencies_and_sees_low_ones():
    ref = torch.randn(4, 3, 16, 16)
    d = dct_basis(16)
    for row, col in [(15, 15), (13, 2), (1, 6)]:  # a spatial frequency at or above floor(16 * 0.4) = 6
        pattern = (d[row][:, None] * d[col][None])[None, None]
        assert energy_reg(ref + pattern, ref, 0.4) < 1e-6
    assert energy_reg(ref + (d[1][:, None] * d[5][None]), ref, 0.4) > 1e-3
    smooth = torch.linspace(-1, 1, 16)[None, None, None]  # a ramp across the columns
    assert energy_reg(ref + smooth, ref, 0.4) > 1e-3
    assert energy_reg(ref + 0.5, ref, 0.4) == pytest.approx(0.5 * math.sqrt(4 * 256) / (3 * 4 * 256) * 3, rel=1e-4)


def test_energy_track_is_the_weighted_cross_entropy():
    was = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    expected = F.cross_entropy(was, labels, weight=class_weights(labels, 3))
    assert torch.allclose(energy_track(was, labels), expected)


def test_step_size_is_the_per_step_alpha_ratio(tiny_backbone):
    betas = tiny_backbone.scheduler.betas
    assert step_size(tiny_backbone.scheduler, 103, 10.0) == pytest.approx(10 * float(betas[103] / (1 - betas[103])))
    assert 1.2e-2 < step_size(tiny_backbone.scheduler, 103, 10.0) < 1.6e-2  # about 0.014 (docs/method.md 8.3)


@pytest.fixture(scope="module")
def window(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    embedding = SegmentEmbedding(tokens=torch.randn(2, tiny_backbone.context_dim, generator=g),
                                 names=["background", "a", "b"], backbone_fingerprint=tiny_backbone.fingerprint)
    frames = torch.rand(3, 64, 64, 3, generator=g)
    latents = add_noise(tiny_backbone, encode_frames(tiny_backbone, frames, (64, 64)), 100, g)
    context = build_context(tiny_backbone.encode_empty_prompt(), embedding.tokens)
    with torch.no_grad():
        _, record = unet_forward(tiny_backbone, latents, 100, context, 3)
        reference = was_inference(record)
    return embedding, context, latents, reference


def test_energy_gradients_reach_the_latent_only(tiny_backbone, window):
    embedding, context, latents, reference = window
    z = (latents + 0.05 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    _, record = unet_forward(tiny_backbone, z, 100, context, 3)
    was = was_inference(record)
    labels = torch.roll(reference.argmax(1), 1, dims=2)
    for energy in (energy_track(was, labels), energy_reg(was, reference, 0.4)):
        (grad,) = torch.autograd.grad(energy, z, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.unet.parameters())


def _was_of(backbone, embedding, context):
    """The differentiable maps guide_latents optimises (as segment.WindowRunner gives them)."""
    return lambda z, t: was_inference(unet_forward(backbone, z, t, context, embedding.num_segments,
                                                   kv=embedding.kv)[1])


def test_guide_latents_moves_the_latent_by_at_most_the_step_and_lowers_e_track(tiny_backbone, window):
    embedding, context, latents, reference = window
    was_of = _was_of(tiny_backbone, embedding, context)
    labels = torch.roll(reference.argmax(1), 1, dims=2)
    energies = []
    out = guide_latents(was_of, latents, 100, reference, labels, GuidanceEnergy(1.0, 0.0, 0.4), iterations=2,
                        sub_slice=2, step=0.002, on_energy=lambda n, s, e: energies.append((n, s, e)))
    assert out.shape == latents.shape and out.dtype == latents.dtype
    assert [(n, s) for n, s, _ in energies] == [(1, 0), (2, 0), (1, 1), (2, 1)]  # a ragged last slice
    moved = (out - latents).abs()
    assert moved.max() <= 2 * 0.002 * 1.0001 and moved.mean() > 2e-5
    assert energies[1][2] < energies[0][2] and energies[3][2] < energies[2][2]
    runs = [guide_latents(was_of, latents[:1], 100, reference[:1], labels[:1], GuidanceEnergy(1.0, 1.0, 0.999),
                          iterations=1, sub_slice=4, step=0.01)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], latents[:1])  # deterministic
    still = guide_latents(was_of, latents, 100, reference, None, GuidanceEnergy(1.0, 0.0, 0.4), iterations=2,
                          sub_slice=4, step=0.01)
    assert torch.equal(still, latents)  # no energy: nothing moves
