"""Edge-aware upsampling of WAS maps (smite_core.method.edges): boundaries follow the frame's colour edges."""

import pytest
import torch
import torch.nn.functional as F

from smite_core.method.edges import edge_aware_upsample
from smite_core.method.was import labels_from_was, upsample_was


def _edge_case(height, width, grid, edge_col):
    """A frame red left of ``edge_col``, blue right of it (with texture noise), and coarse maps whose
    class boundary sits on the grid a few pixels away from the true edge."""
    g = torch.Generator().manual_seed(0)
    frame = torch.zeros(1, height, width, 3)
    frame[..., :edge_col, 0] = 0.8
    frame[..., edge_col:, 2] = 0.8
    frame = (frame + 0.03 * torch.rand(frame.shape, generator=g)).clamp(0, 1)
    cell = width / grid[1]
    boundary = round(edge_col / cell) + 1  # one cell to the right of the true edge
    maps = torch.zeros(1, 2, *grid)
    maps[:, 0, :, :boundary] = 1.0
    maps[:, 1, :, boundary:] = 1.0
    return frame, maps


def _boundary_columns(labels):
    """Column of the first class-1 pixel in every row."""
    return (labels[0] == 1).int().argmax(1).float()


@pytest.mark.parametrize("height,width,grid", [(64, 64, (16, 16)), (90, 200, (12, 25))])
def test_boundary_snaps_to_the_colour_edge(height, width, grid):
    """The second case is larger than the filter's work grid (coefficients upsampled to the frame)."""
    edge_col = 37 if width == 64 else 93
    cell = width / grid[1]
    frame, maps = _edge_case(height, width, grid, edge_col)
    guided = (_boundary_columns(labels_from_was(maps, (height, width), frame)) - edge_col).abs()
    bilinear = (_boundary_columns(labels_from_was(maps, (height, width))) - edge_col).abs()
    assert bilinear.mean() >= 0.7 * cell, bilinear  # plain upsampling leaves the boundary on the grid
    assert guided.mean() <= 0.4 * cell and guided.max() <= 0.5 * cell, guided


def test_no_colour_edge_no_shift():
    """On a flat frame a map boundary stays where bilinear upsampling puts it."""
    maps = torch.zeros(1, 2, 16, 16)
    maps[:, 0, :, :7] = 1.0
    maps[:, 1, :, 7:] = 1.0
    frame = torch.full((1, 64, 64, 3), 0.5)
    guided = _boundary_columns(labels_from_was(maps, (64, 64), frame))
    bilinear = _boundary_columns(labels_from_was(maps, (64, 64)))
    assert (guided - bilinear).abs().max() <= 1


def test_shapes_and_errors():
    maps = torch.randn(3, 4, 6, 5)
    frames = torch.rand(3, 50, 41, 3)
    assert edge_aware_upsample(maps, frames).shape == (3, 4, 50, 41)
    rgba = torch.cat([frames, torch.ones(3, 50, 41, 1)], dim=3)  # an alpha channel is ignored
    assert torch.equal(edge_aware_upsample(maps, rgba), edge_aware_upsample(maps, frames))
    assert upsample_was(maps, (50, 41)).shape == (3, 4, 50, 41)
    with pytest.raises(ValueError, match="2 frames"):
        edge_aware_upsample(maps, frames[:2])
    with pytest.raises(ValueError, match="frames are"):
        upsample_was(maps, (49, 41), frames)


def test_export_upsamples_along_the_frames_unless_told_not_to(tmp_path):
    from smite_core.io.label_png import read_label_png
    from smite_core.io.video_io import FrameSource
    from smite_core.method.export import export_segmentation

    frame, maps = _edge_case(64, 64, (16, 16), 37)
    frames = torch.cat([frame, frame.flip(2)])
    maps = torch.cat([maps, maps.flip(3)])
    names = ["background", "part"]
    for edge_aware in (True, False):
        out = tmp_path / str(edge_aware)
        export_segmentation(out, enumerate(maps), FrameSource.from_tensor(frames), names, overlay_format=None,
                            edge_aware=edge_aware)
        expected = labels_from_was(maps, (64, 64), frames if edge_aware else None)
        for t in range(2):
            assert (read_label_png(out / "labels" / f"{t:05d}.png") == expected[t].numpy()).all()
    assert (read_label_png(tmp_path / "True" / "labels" / "00000.png")
            != read_label_png(tmp_path / "False" / "labels" / "00000.png")).any()


@pytest.mark.parametrize("radius", [1, 4, 12])
def test_box_mean_matches_pooling(radius):
    from smite_core.method.edges import _box

    x = torch.randn(2, 5, 40, 33, generator=torch.Generator().manual_seed(2))
    pooled = F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    assert torch.allclose(_box(x, radius), pooled, atol=1e-5)
