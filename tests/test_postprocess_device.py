"""Predictor.postprocess split into a device stage of fixed shapes (DevicePostprocess) and a host stage:
no host synchronisation in the device stage (checked on the CPU by tracing it with dynamo and
finding no data-dependent value in the graph; on a GPU by capturing it in a CUDA graph and by
torch.cuda.set_sync_debug_mode), its shapes independent of the data, and NMS clipping in
mask_mode="release"."""
import math

import numpy as np
import pytest
import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from rtpanoptic import ops
from rtpanoptic.benchmark import heavy_postprocess_load
from rtpanoptic.inference import DeviceResult, Predictor, nms_queries
from rtpanoptic.model import build_model
from rtpanoptic.model.config import InferenceConfig

gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
_MODELS = {}


def _model(preset="r18-fpn", device="cpu"):
    if (preset, device) not in _MODELS:
        torch.manual_seed(0)
        model = build_model(preset).eval()
        heavy_postprocess_load(model)  # every location a candidate: queries and segments to fuse
        _MODELS[preset, device] = model.to(device)
    return _MODELS[preset, device]


def _outputs(pred, seed, sizes=((121, 203),)):
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1) for h, w in sizes]
    with torch.no_grad():
        batch, got_sizes = pred.preprocess(images)
        return pred.network(batch), got_sizes


def _leaves(results):
    return torch.utils._pytree.tree_leaves(results)


def _assert_results_equal(got, want):
    for a, b in zip(got, want):
        assert torch.equal(a.panoptic, b.panoptic) and torch.equal(a.semantic, b.semantic)
        assert a.segments_info == b.segments_info
        for x, y in zip((a.detections.boxes, a.detections.scores, a.detections.labels),
                        (b.detections.boxes, b.detections.scores, b.detections.labels)):
            assert torch.equal(x, y)


# ------------------------------------------------------------- no host reads, on the CPU
def _data_dependent_nodes(gm: torch.fx.GraphModule) -> list[str]:
    """Nodes of a dynamo graph whose value or shape depends on tensor data (an unbacked symbol:
    ``.item()``, ``.tolist()``, boolean-mask indexing, ``nonzero``, a data-dependent output size),
    or that copy to the host.  A graph without them runs without waiting for the device."""
    bad = []
    for node in gm.graph.nodes:
        value = node.meta.get("example_value")
        leaves = [v for v in _leaves(value) if isinstance(v, (torch.Tensor, torch.SymInt, torch.SymFloat,
                                                              torch.SymBool))]
        host_read = node.op == "call_method" and node.target in ("item", "tolist", "cpu", "numpy")
        if host_read or any(free_unbacked_symbols(v) for v in leaves):
            bad.append(node.format_node())
    return bad


def _trace(fn, *args):
    """Run ``fn`` under ``torch.compile(fullgraph=True, dynamic=False)`` (no graph break allowed);
    -> (its result, the data-dependent nodes of its graph)."""
    found = []

    def backend(gm, example_inputs):
        found.extend(_data_dependent_nodes(gm))
        return gm

    torch._dynamo.reset()
    try:
        out = torch.compile(fn, fullgraph=True, backend=backend, dynamic=False)(*args)
    finally:
        torch._dynamo.reset()
    return out, found


def test_the_checker_finds_host_reads():
    """Dynamo traces .item() and boolean masks without a graph break (torch >= 2.x captures them
    as unbacked values), so fullgraph alone proves nothing: the graph is inspected."""
    x = torch.randn(6)
    assert _trace(lambda t: t.sum().item() * t, x)[1]
    assert _trace(lambda t: t[t > 0], x)[1]
    assert _trace(lambda t: torch.nonzero(t > 0), x)[1]
    assert not _trace(lambda t: torch.where(t > 0, t, 0).sort().values, x)[1]


def _pipeline_backends():
    avail = ops.available_backends("cpu")
    from rtpanoptic.inference import PIPELINE_OPS
    return [b for b in ("cpp", "triton") if all(b in avail[op] for op in PIPELINE_OPS)]


@pytest.mark.parametrize("backend", _pipeline_backends())
def test_device_stage_traces_without_host_reads(backend):
    """The device stage traces in one graph with nothing data-dependent in it, and gives the eager
    results; the query stage with its host-side trim (Predictor.detect) is caught."""
    pred = Predictor(_model(), backend=backend, channels_last=False, sigma=0.05, stuff_area_limit=16)
    outputs, sizes = _outputs(pred, 0, [(121, 203), (100, 127)] if backend == "cpp" else [(64, 96)])
    with torch.no_grad():
        want = pred.postprocess_device(outputs, sizes)
        got, bad = _trace(pred.stage, outputs, sizes)
        assert bad == []
        assert all(torch.equal(a, b) for a, b in zip(_leaves(got), _leaves(want)))
        assert isinstance(got[0], DeviceResult) and int(got[0].segment_count) > 3
        _, bad = _trace(pred.detect, outputs, sizes)
        assert bad  # int(count) and the slicing by it


@pytest.mark.parametrize("semantic_dtype", ["uint8", "int16"])
def test_device_stage_passes_semantic_dtype_through(semantic_dtype):
    """InferenceConfig.semantic_dtype reaches ops.upsample_argmax from the device stage, eager and
    traced (one graph, fullgraph): the int64 stage's semantic map in that dtype, the rest unchanged."""
    wide = Predictor(_model(), channels_last=False, sigma=0.05, stuff_area_limit=16)
    narrow = Predictor(_model(), channels_last=False, sigma=0.05, stuff_area_limit=16, semantic_dtype=semantic_dtype)
    assert narrow.stage.semantic_dtype == getattr(torch, semantic_dtype)
    outputs, sizes = _outputs(wide, 7, [(64, 96)])
    with torch.no_grad():
        (want,) = wide.postprocess_device(outputs, sizes)
        (eager,) = narrow.postprocess_device(outputs, sizes)
        (traced,), bad = _trace(narrow.stage, outputs, sizes)
    assert bad == [] and want.semantic.dtype == torch.int64 and want.semantic.unique().numel() > 1
    for got in (eager, traced):
        assert got.semantic.dtype == getattr(torch, semantic_dtype)
        assert torch.equal(got.semantic, want.semantic.to(got.semantic.dtype))
        assert torch.equal(got.panoptic, want.panoptic)


def test_device_stage_shapes_do_not_depend_on_the_data():
    """Same input size, different data (many candidates / none at all): the same shapes and dtypes,
    so one CUDA graph serves every frame of a size; the host stage reads the counts."""
    pred = Predictor(_model(), channels_last=False, sigma=0.05, stuff_area_limit=16)
    outputs, sizes = _outputs(pred, 1, [(121, 203)])
    empty = outputs._replace(class_logits=[torch.full_like(c, -30.0) for c in outputs.class_logits])
    with torch.no_grad():
        full, none = pred.postprocess_device(outputs, sizes), pred.postprocess_device(empty, sizes)
        assert [(t.shape, t.dtype) for t in _leaves(full)] == [(t.shape, t.dtype) for t in _leaves(none)]
        assert int(full[0].queries.count) == pred.options.post_nms_top_n and int(none[0].queries.count) == 0
        (res,) = pred.to_results(none)
        assert res.detections.boxes.shape == (0, 4) and not any(s["isthing"] for s in res.segments_info)
        _assert_results_equal(pred.to_results(full), pred.postprocess(outputs, sizes))


def test_capture_postprocess_refuses_what_cannot_be_captured():
    outputs, sizes = _outputs(Predictor(_model(), channels_last=False), 2, [(64, 64)])
    with pytest.raises(ValueError, match=r"^capture_postprocess: CUDA graphs need head outputs on a CUDA device, "
                                         r"got cpu$"):
        Predictor(_model(), channels_last=False).capture_postprocess(outputs, sizes)
    with pytest.raises(ValueError, match=r"^capture_postprocess: mask_mode='release' cannot be captured"):
        Predictor(_model(), channels_last=False, mask_mode="release").capture_postprocess(outputs, sizes)


@pytest.mark.skipif("cpp" not in _pipeline_backends(), reason="needs the C++ kernels of every pipeline op")
def test_traced_device_stage_replays_to_the_eager_result():
    """The CPU counterpart of test_captured_postprocess_replays_to_the_eager_result: the device stage
    traced once (one dynamo graph, fullgraph, static shapes) and run on new outputs of the same shapes,
    retracing forbidden, gives the eager post-processing's results bit for bit (also for a frame
    without any candidate): nothing of one frame's data is baked into the graph."""
    pred = Predictor(_model(), backend="cpp", channels_last=False, sigma=0.05, stuff_area_limit=16)
    outputs, sizes = _outputs(pred, 4, [(121, 203)])
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    stage = torch.compile(lambda o: pred.stage(o, sizes), fullgraph=True, backend=backend, dynamic=False)
    try:
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            pred.postprocess_device(outputs, sizes)  # warm-up, as before a capture: the constants on the device
            stage(outputs)
            new = [_outputs(pred, seed, [(121, 203)])[0] for seed in (5, 6)]
            new.append(new[-1]._replace(class_logits=[torch.full_like(c, -30.0) for c in new[-1].class_logits]))
            for frame in new:
                want = pred.postprocess(frame, sizes)
                _assert_results_equal(pred.to_results(stage(frame)), want)
            assert sum(len(r.thing_segments) for r in pred.postprocess(new[0], sizes)) > 2
            assert not any(s["isthing"] for s in want[0].segments_info)  # the empty frame
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1


# ------------------------------------------------------------- NMS clipping (issue 16)
def test_release_mode_nms_sees_boxes_clipped_to_w_minus_1():
    """mask_mode="release" clips the candidates to [0, W-1] x [0, H-1] before NMS, as the release;
    the default clips to [0, W] x [0, H].  Here that decides whether B survives NMS at 0.97:
    clipped to [0, 10] A and B have IoU 0.95, clipped to [0, 9] they are the same box."""
    boxes = torch.tensor([[5.0, -3.0, 20.0, 10.0], [5.0, 0.0, 10.0, 9.5], [-2.0, 1.0, 3.0, 12.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 0])
    grid = InferenceConfig(nms_thresh=0.97, global_nms_thresh=None, post_nms_top_n=10)
    release = InferenceConfig(nms_thresh=0.97, global_nms_thresh=None, post_nms_top_n=10, mask_mode="release")
    clipped, keep = nms_queries(boxes, scores, labels, (10, 10), grid)
    assert clipped.tolist() == [[5.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 9.5], [0.0, 1.0, 3.0, 10.0]]
    assert keep.tolist() == [0, 1, 2]
    clipped, keep = nms_queries(boxes, scores, labels, (10, 10), release)
    assert clipped.tolist() == [[5.0, 0.0, 9.0, 9.0], [5.0, 0.0, 9.0, 9.0], [0.0, 1.0, 3.0, 9.0]]
    assert keep.tolist() == [0, 2]
    nan = torch.tensor([[math.nan, 1.0, 2.0, 30.0]])
    assert torch.equal(nms_queries(nan, scores[:1], labels[:1], (10, 10), release)[0].isnan(), nan.isnan())


@pytest.mark.skipif("cpp" not in ops.available_backends("cpu")["panoptic_from_dense_release"],
                    reason="no C++ kernel built")
def test_release_mode_detections_lie_in_w_minus_1():
    """Large boxes at the border: the release mode's queries (and so its mask boxes) stay inside
    [0, W-1] x [0, H-1]; the default mode's reach W and H."""
    h, w = 70, 90
    grid = Predictor(_model(), channels_last=False)
    release = Predictor(_model(), channels_last=False, mask_mode="release", sigma=0.05)
    outputs, sizes = _outputs(grid, 3, [(h, w)])
    (g,), (r,) = grid.detect(outputs, sizes), release.detect(outputs, sizes)
    limit = torch.tensor([w, h, w, h], dtype=torch.float32)
    assert (g.boxes == limit).any() and (g.boxes <= limit).all()
    assert (r.boxes <= limit - 1).all() and (r.boxes == limit - 1).any() and (r.boxes >= 0).all()
    (res,) = release.postprocess(outputs, sizes)
    assert torch.equal(res.detections.boxes, r.boxes) and any(s["isthing"] for s in res.segments_info)


# ------------------------------------------------------------------------ on a GPU
def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    avail = ops.available_backends("cuda")
    from rtpanoptic.inference import PIPELINE_OPS
    return [b for b in ("cuda", "triton") if all(b in avail[op] for op in PIPELINE_OPS)]


@gpu_only
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("preset", ["r18-fpn", "tri-cityscapes-r50"])
def test_captured_postprocess_replays_to_the_eager_result(backend, preset):
    """The device stage captured in a CUDA graph at a fixed size, replayed on new outputs: the
    eager post-processing's results, bit for bit (also for a frame without any candidate)."""
    pred = Predictor(_model(preset, "cuda"), backend=backend, channels_last=False, sigma=0.05, stuff_area_limit=16)
    sizes = [(250, 380), (256, 333)]
    outputs, got_sizes = _outputs(pred, 4, sizes)
    captured = pred.capture_postprocess(outputs, got_sizes)
    for seed in (5, 6):
        new, _ = _outputs(pred, seed, sizes)
        with torch.no_grad():
            want = pred.postprocess(new, got_sizes)
        got = captured(new)
        assert sum(len(r.thing_segments) for r in want) > 2
        _assert_results_equal(got, want)
    empty = new._replace(class_logits=[torch.full_like(c, -30.0) for c in new.class_logits])
    with torch.no_grad():
        _assert_results_equal(captured(empty), pred.postprocess(empty, got_sizes))


@gpu_only
@pytest.mark.parametrize("backend", _gpu_backends())
def test_device_stage_never_synchronises(backend):
    pred = Predictor(_model("tri-cityscapes-r50", "cuda"), backend=backend, channels_last=False)
    outputs, sizes = _outputs(pred, 7, [(512, 1024)])
    with torch.no_grad():
        want = pred.postprocess_device(outputs, sizes)  # warm-up: Triton compilation, constants on the device
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = pred.postprocess_device(outputs, sizes)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(_leaves(got), _leaves(want)))


@gpu_only
def test_padded_panoptic_program_is_captured():
    """PanopticProgram(padded=True): the whole Predictor (network + device stage) in one CUDA graph."""
    from rtpanoptic.execution import capture_cuda_graph
    from rtpanoptic.export import PanopticProgram

    model = _model("r18-fpn", "cuda")
    program = PanopticProgram(model, padded=True).eval()
    image = torch.randint(0, 256, (1, 3, 256, 384), dtype=torch.uint8, device="cuda",
                          generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        want = [t.clone() for t in program(image)]
        graph, out = capture_cuda_graph(lambda: program(image), "cuda")
        graph.replay()
    assert all(torch.equal(a, b) for a, b in zip(out, want)) and int(want[-1]) > 0
