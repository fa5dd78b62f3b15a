"""The memory tracker (``smite_core.model.memory_tracker``): what it counts, and that a run on fake tensors (no memory,
no kernels) gives the peak of the same run on real tensors, the first step of planning memory before a run (#37)."""

import torch

from smite_core.model.memory_tracker import CUDA_BLOCK, LiveBytes, peak_bytes


def test_allocations_count_until_freed_views_and_in_place_results_do_not():
    outside = torch.ones(1000)  # made before the tracker: not counted
    with LiveBytes() as tracker:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[:10].view(2, 5)
        a.add_(1)
        b = outside * 2  # 4000 more
        assert tracker.current == tracker.peak == 8000
        del a, view
        assert tracker.current == 4000
        c = torch.empty(10)
        assert tracker.current == 4040 and tracker.peak == 8000
        del b, c
        assert tracker.current == 0
    with LiveBytes(block=CUDA_BLOCK) as rounded:
        torch.zeros(10)  # 40 bytes in a 512-byte block
    assert rounded.peak == 512


def test_fake_tensors_give_the_real_runs_peak(tiny_backbone):
    """A UNet pass of the tiny backbone, and a pass with its backward (guidance's shape of work): the peak counted on
    fake tensors equals the real run's within 2 % (here exactly), allocator rounding included."""
    from smite_core.model.unet_pass import unet_forward

    context_dim = tiny_backbone.unet.config.cross_attention_dim

    def forward():
        with torch.no_grad():
            unet_forward(tiny_backbone, torch.randn(8, 4, 32, 32), 100, torch.randn(1, 77, context_dim), 5)

    def forward_backward():
        latents = torch.randn(4, 4, 32, 32, requires_grad=True)
        maps, _ = unet_forward(tiny_backbone, latents, 100, torch.randn(1, 77, context_dim), 5)
        maps.float().sum().backward()

    for fn in (forward, forward_backward):
        for block in (1, CUDA_BLOCK):
            real, fake = peak_bytes(fn, block=block), peak_bytes(fn, fake=True, block=block)
            assert real > 10 * 2**20 and abs(fake - real) <= 0.02 * real, (fn.__name__, block, real, fake)
    assert peak_bytes(forward_backward) > peak_bytes(forward)  # half the frames, but activations kept for the backward


def test_fake_tensors_give_the_real_runs_peak_on_the_sd_architectures():
    """The reduced-width SD 1.5 and SD 2.1 of the parity tests (SD's blocks, heads and attention layout): the UNet pass
    and its backward, on fake tensors, peak where the real run peaks."""
    from test_parity import MODELS, parity_backbone

    from smite_core.model.unet_pass import unet_forward

    for name in MODELS:
        backbone = parity_backbone(name)
        context_dim = backbone.unet.config.cross_attention_dim

        def forward_backward():
            latents = torch.randn(4, 4, 16, 16, requires_grad=True)
            maps, _ = unet_forward(backbone, latents, 100, torch.randn(1, 77, context_dim), 4)
            maps.float().sum().backward()

        real, fake = peak_bytes(forward_backward, block=CUDA_BLOCK), peak_bytes(forward_backward, fake=True,
                                                                                 block=CUDA_BLOCK)
        assert real > 2**20 and abs(fake - real) <= 0.02 * real, (name, real, fake)
