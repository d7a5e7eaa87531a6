"""``Predictor.stream``: results equal to the Predictor's on the same batches, laziness, timings,
errors; the CUDA paths (pinned copies on a copy stream, CUDA graphs) where a GPU exists."""
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model
from rtpanoptic.stream import StageTimer

HAS_GPU = torch.cuda.is_available()


def _model(seed=0):
    torch.manual_seed(seed)
    m = build_model("r18-fpn", description="synthetic", channels=16).eval()
    with torch.no_grad():  # a random network that still finds things: every box ~32 px
        m.panoptic_head.box_cls_logits.bias.fill_(0.0)
        m.panoptic_head.bbox_pred.bias.fill_(math.log(16.0))
    return m


def _frames(n, sizes=((96, 160),), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def _same(a, b):
    assert torch.equal(a.panoptic, b.panoptic)
    assert a.segments_info == b.segments_info
    assert torch.equal(a.semantic, b.semantic)
    assert torch.equal(a.detections.boxes, b.detections.boxes)
    assert torch.equal(a.detections.scores, b.detections.scores)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_stream_equals_predictor_on_the_same_batches(batch_size):
    """Batches: up to batch_size consecutive frames of one padded size (128-multiples)."""
    pred = Predictor(_model(), pre_nms_thresh=0.3, post_nms_top_n=20)
    # mixed sizes (padded: 128x256, 128x256, 128x128, 128x256, 128x256, 128x128) and input types
    frames = _frames(6, sizes=((96, 160), (70, 130), (128, 100)))
    frames[1] = torch.from_numpy(frames[1]).permute(2, 0, 1)
    frames[2] = Image.fromarray(frames[2])
    got = list(pred.stream(iter(frames), batch_size=batch_size))
    batches = [[0], [1], [2], [3], [4], [5]] if batch_size == 1 else [[0, 1], [2], [3, 4], [5]]
    want = [r for b in batches for r in pred([frames[i] for i in b])]
    assert len(got) == len(frames)
    assert sum(len(r.segments_info) for r in want) > len(frames)  # the post-processing had work to do
    for a, b in zip(got, want):
        _same(a, b)


def test_stream_is_lazy_and_reads_one_batch_ahead():
    pred = Predictor(_model())
    read = []

    def endless():
        for i in itertools.count():
            read.append(i)
            yield np.full((64, 64, 3), i % 256, dtype=np.uint8)

    it = pred.stream(endless(), batch_size=2)
    assert read == []  # nothing happens before the first result is asked for
    first = next(it)
    assert first.panoptic.shape == (64, 64)
    assert len(read) == 4  # batch 0, and batch 1 read while batch 0's network ran
    assert len(list(itertools.islice(it, 3))) == 3
    assert len(read) == 6
    assert torch.is_grad_enabled()  # the generator's no_grad does not leak to the caller


def test_stream_timer():
    pred = Predictor(_model())
    timer = StageTimer()
    assert len(list(pred.stream(_frames(5), batch_size=2, timer=timer))) == 5  # batches of 2, 2, 1
    summary = timer.summary()
    assert list(summary) == ["decode", "preprocess", "network", "postprocess"]
    for s in summary.values():
        assert s["frames"] == 5 and 0 <= s["p50"] <= s["p95"]
    # a batch's time is split evenly over its frames: the 2-frame batches give equal pairs
    net = timer.samples["network"]
    assert net[0] == net[1] and net[2] == net[3]


def test_stage_timer_statistics():
    timer = StageTimer()
    timer.add("network", 0.4, frames=4)  # 100 ms for each of 4 frames
    for ms in (10, 20, 30, 40, 1000):
        timer.add("decode", ms / 1e3)
    s = timer.summary()
    assert list(s) == ["decode", "network"]  # pipeline order
    assert s["network"] == {"mean": pytest.approx(100), "p50": pytest.approx(100), "p95": pytest.approx(100),
                            "frames": 4}
    assert s["decode"]["mean"] == pytest.approx(220) and s["decode"]["p50"] == pytest.approx(30)
    assert s["decode"]["p95"] == pytest.approx(40 + 0.8 * 960)  # linear interpolation, as numpy


def test_stream_errors():
    pred = Predictor(_model())
    with pytest.raises(ValueError, match=r"^stream: batch_size must be an int >= 1, got 0$"):
        pred.stream([], batch_size=0)
    with pytest.raises(ValueError, match=r"^frames\[1\]: expected one image, got a batch of 2$"):
        list(pred.stream([_frames(1)[0], np.zeros((2, 64, 64, 3), np.uint8)]))
    with pytest.raises(ValueError, match=r"^frames\[0\]: every frame needs a positive size, got \(0, 64\)$"):
        list(pred.stream([np.zeros((0, 64, 3), np.uint8)]))
    with pytest.raises(TypeError, match=r"numpy images must be uint8 RGB, got float32"):
        list(pred.stream([np.zeros((64, 64, 3), np.float32)]))
    if not HAS_GPU:
        with pytest.raises(ValueError, match=r"^cuda_graph=True needs the model on a CUDA device$"):
            pred.stream([], cuda_graph=True)
    assert list(pred.stream([])) == []


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stream_cuda_copies_and_graphs(precision):
    model = _model().cuda()
    pred = Predictor(model, precision=precision, pre_nms_thresh=0.3, post_nms_top_n=20)
    frames = _frames(5)
    want = [pred(f)[0] for f in frames]
    for a, b in zip(pred.stream(frames), want):
        _same(a, b)
    for a, b in zip(pred.stream(frames, cuda_graph=True), want):  # the same kernels, replayed
        assert torch.equal(a.panoptic, b.panoptic)
        torch.testing.assert_close(a.detections.scores, b.detections.scores)
