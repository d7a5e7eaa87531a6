"""segment_stats on the grid (stride > 1: per-row / per-column cell counts and the area from them)
and upsample_ids, against an independent reference built from the full-resolution id map: the grid
upsampled with repeat_interleave, then per segment its pixel count and the extent of torch.nonzero.
Random grids and adversarial ones (segments only in the partial last row / column / corner cell,
sizes not divisible by the stride, empty segments, 1x1 grids), ids outside 1..n, tracing."""
import math

import pytest
import torch
from test_postprocess_device import _trace

from rtpanoptic.inference import segment_stats, upsample_ids


def _full(grid: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    return grid.repeat_interleave(stride, 0).repeat_interleave(stride, 1)[: size[0], : size[1]]


def _reference(grid: torch.Tensor, n: int, stride: int, size: tuple[int, int]) -> tuple[list, list]:
    """Areas and COCO boxes of segments 1..n of the full-resolution map, pixel by pixel."""
    full = _full(grid, stride, size)
    areas, boxes = [], []
    for k in range(1, n + 1):
        ys, xs = torch.nonzero(full == k, as_tuple=True)
        areas.append(ys.numel())
        if ys.numel() == 0:
            boxes.append([0, 0, 0, 0])
        else:
            x0, y0 = int(xs.min()), int(ys.min())
            boxes.append([x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0])
    return areas, boxes


def _check(grid, n, stride, size):
    areas, boxes = segment_stats(grid, n, stride, size)
    assert areas.dtype == boxes.dtype == torch.int64 and areas.shape == (n,) and boxes.shape == (n, 4)
    want_areas, want_boxes = _reference(grid, n, stride, size)
    assert areas.tolist() == want_areas
    assert boxes.tolist() == want_boxes
    return want_areas


def _grid(size, stride, n, seed, dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n + 1, (math.ceil(size[0] / stride), math.ceil(size[1] / stride)), generator=g, dtype=dtype)


@pytest.mark.parametrize("stride,size,n", [
    (4, (1023, 2047), 6),  # the 1024x2048 grid, last cells 3 pixels tall and wide
    (4, (1024, 2048), 6),  # divisible: every cell full
    (4, (37, 58), 9),
    (8, (50, 17), 3),
    (2, (7, 9), 4),
    (3, (7, 20), 12),  # n larger than the ids present (0..12 drawn from few cells)
    (5, (1, 1), 2),  # a 1x1 grid, one pixel
    (4, (4, 4), 1),  # a 1x1 grid, one full cell
    (8, (1, 45), 5),  # one row of cells, one pixel tall
    (8, (45, 1), 5),  # one column of cells, one pixel wide
])
def test_random_grids_equal_full_resolution_reference(stride, size, n):
    for seed, dtype in ((0, torch.int32), (1, torch.int64)):
        _check(_grid(size, stride, n, seed, dtype), n, stride, size)


def _placed(hv, wv, cells):
    grid = torch.zeros(hv, wv, dtype=torch.int32)
    for k, (y, x) in enumerate(cells, start=1):
        grid[y, x] = k
    return grid


@pytest.mark.parametrize("size", [(13, 22), (16, 24), (9, 17), (14, 23)])
def test_segments_in_the_partial_last_row_column_and_corner(size):
    """One segment in each of: the corner cell, the last row only, the last column only, a single
    inner cell; a segment spanning the whole last row, one spanning the last column; one absent."""
    stride = 4
    hv, wv = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
    grid = _placed(hv, wv, [(hv - 1, wv - 1), (hv - 1, 1), (0, wv - 1), (1, 1)])
    areas = _check(grid, 7, stride, size)
    assert areas[4:] == [0, 0, 0]
    grid = torch.zeros(hv, wv, dtype=torch.int32)
    grid[-1, :] = 1
    grid[:, -1] = 2  # takes the corner
    grid[:-1, 0] = 3
    _check(grid, 4, stride, size)
    _check(grid.t().contiguous(), 4, stride, size[::-1])
    _check(torch.ones(hv, wv, dtype=torch.int32), 1, stride, size)  # one segment over the whole image


def test_hand_computed_partial_cells():
    """stride 4, size (6, 7): rows of cells 4 and 2 pixels tall, columns 4 and 3 wide."""
    grid = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    areas, boxes = segment_stats(grid, 5, 4, (6, 7))
    assert areas.tolist() == [16, 12, 8, 6, 0]
    assert boxes.tolist() == [[0, 0, 4, 4], [4, 0, 3, 4], [0, 4, 4, 2], [4, 4, 3, 2], [0, 0, 0, 0]]
    grid = torch.tensor([[0, 1], [1, 1]], dtype=torch.int32)  # an L: 12 + 8 + 6 pixels
    areas, boxes = segment_stats(grid, 1, 4, (6, 7))
    assert areas.tolist() == [26] and boxes.tolist() == [[0, 0, 7, 6]]


def test_non_contiguous_grids():
    base = _grid((40, 64), 2, 5, 3, torch.int64)
    for grid in (base.t(), base[::2, 1::3], base[1:, :-1]):
        size = (grid.shape[0] * 3 - 2, grid.shape[1] * 3 - 1)
        _check(grid, 5, 3, size)


def test_ids_outside_one_to_n():
    """Id 0 is background (counted nowhere); an id above n or below 0 raises IndexError."""
    assert segment_stats(torch.zeros(3, 4, dtype=torch.int32), 2, 4, (10, 13))[0].tolist() == [0, 0]
    grid = _grid((18, 22), 4, 3, 5)
    for bad in (4, 9, -1):
        wrong = grid.clone()
        wrong[2, 3] = bad
        with pytest.raises(IndexError):
            segment_stats(wrong, 3, 4, (18, 22))
    wrong = torch.zeros(3, 4, dtype=torch.int32)
    wrong[1, 2] = 2**30 + 1  # id * w = 2^32 + 4: in range again if that wrapped around in int32
    with pytest.raises(IndexError):
        segment_stats(wrong, 3, 4, (10, 13))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_upsample_ids_equals_nearest_upsampling(dtype):
    """Same values, dtype and shape as the nearest upsampling cropped to the size; crops smaller than
    the grid covers, non-contiguous grids."""
    base = _grid((60, 90), 4, 200, 7, torch.int64).to(dtype)
    for grid in (base, base.t(), base[::2, 1::3], base[2:, :-3]):
        hv, wv = grid.shape
        for stride in (2, 4, 5):
            for size in ((hv * stride, wv * stride), (hv * stride - 1, wv * stride - stride + 1),
                         (max(1, (hv - 2) * stride - 1), max(1, wv * stride // 2)), (1, 1)):
                got = upsample_ids(grid, stride, size)
                assert got.dtype == dtype and got.shape == size
                assert torch.equal(got, _full(grid, stride, size))


def test_grid_stats_trace_without_host_reads():
    """segment_stats (stride > 1) and upsample_ids trace in one graph (fullgraph, static shapes)
    with no data-dependent value in it, and give the eager results."""
    def stage(grid):
        return upsample_ids(grid, 4, (61, 83)), *segment_stats(grid, 7, 4, (61, 83))

    grid = _grid((61, 83), 4, 7, 11)
    got, bad = _trace(stage, grid)
    assert bad == []
    assert all(torch.equal(a, b) for a, b in zip(got, stage(grid)))
