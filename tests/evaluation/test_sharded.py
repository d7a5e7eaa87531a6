"""``rtpanoptic evaluate`` under torchrun: 2 gloo processes give exactly the single-process
metrics and files, only rank 0 writes, and a failing or silent rank ends in a one-line error."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpanoptic.cli import main

DATA = ["data.synthetic_num_train=4", "data.synthetic_num_val=5"]  # 5 images: rank 0 gets 3, rank 1 gets 2
TIMING = ("inference_ms_per_image", "eval_seconds", "files")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint of the synthetic preset trained a few steps, and its single-process evaluation."""
    from rtpanoptic.engine import train
    from rtpanoptic.pipeline import build_dataset, train_config

    root = tmp_path_factory.mktemp("sharded")
    data = [f"data.root={root / 'data'}", *DATA]
    cfg = train_config("synthetic", None, [*data, f"runtime.output_dir={root / 'train'}", "schedule.max_steps=12",
                                           "schedule.warmup_steps=1", "schedule.milestones=[]", "runtime.progress=false",
                                           "runtime.batch_size=4"])
    result = train(cfg, train_set=build_dataset(cfg, cfg.data.train_split, train=True, progress=False))
    args = ["evaluate", "--weights", str(result.checkpoint), "--device", "cpu", "--no-progress", "--overlays", "4",
            "--threads", "1"]
    single = root / "single"
    assert main([*args, "--output-dir", str(single)]) == 0
    return root, args, single


def _torchrun(args, out, script=None, timeout=400):
    target = [str(script)] if script else ["-m", "rtpanoptic"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args,
           "--output-dir", str(out)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _files(folder: Path) -> dict[str, bytes]:
    """The outputs under ``folder``; not the record of the run's files (rtpanoptic.safe_io), whose
    lines follow the order in which the files were written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".rtpanoptic-files.jsonl"}


def test_two_processes_give_the_single_process_metrics_and_files(setup):
    root, args, single = setup
    out = root / "two"
    proc = _torchrun(args, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 reports
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((out / "metrics.json").read_text())
    assert one["images"] == two["images"] == 5
    assert set(one) == set(two)
    for key in set(one) - set(TIMING):
        a, b = one[key], two[key]
        if isinstance(a, dict):
            assert set(a) == set(b), key
            for k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-9, nan_ok=True), (key, k)
        else:
            assert a == pytest.approx(b, abs=1e-9, nan_ok=True), key
    assert one["mIoU"] > 0
    # mask AP needs pycocotools (NaN with a warning without it, e.g. on the GPU image)
    assert np.isfinite(one["AP"]) == (importlib.util.find_spec("pycocotools") is not None)
    predicted = json.loads((single / "predictions.json").read_text())["annotations"]
    assert sum(len(a["segments_info"]) for a in predicted) > 0
    # every prediction PNG, overlay and JSON: the same bytes
    files_one, files_two = _files(single), _files(out)
    assert sorted(files_one) == sorted(files_two)
    assert len([f for f in files_one if f.startswith("predictions/")]) == 5
    assert len([f for f in files_one if f.startswith("overlays/")]) == 4
    for name in files_one:
        if name != "metrics.json":
            assert files_one[name] == files_two[name], name


FAILING = '''
import sys
import torch.distributed as dist
import rtpanoptic.inference as inference
from rtpanoptic.cli import main

real = inference.Predictor.__call__

def call(self, images):
    if dist.is_initialized() and dist.get_rank() == 1:
        {action}
    return real(self, images)

inference.Predictor.__call__ = call
sys.exit(main(sys.argv[1:]))
'''


def test_a_failing_rank_is_a_one_line_error_on_every_rank(setup):
    root, args, _ = setup
    script = root / "fail_rank1.py"
    script.write_text(FAILING.format(action='raise RuntimeError("injected failure")'))
    out = root / "failed"
    proc = _torchrun(args, out, script=script)
    assert proc.returncode != 0
    line = "rtpanoptic evaluate: error: evaluation failed on rank 1 of 2: RuntimeError: injected failure"
    # both ranks print it (their stderr share one pipe, so the lines may run into each other)
    assert proc.stderr.count(line) == 2 and proc.stderr.count("rtpanoptic evaluate: error") == 2, proc.stderr[-3000:]
    # torchrun's report: the failed worker(s) exited with status 2 (torchrun may stop the other one first)
    assert proc.stderr.count("exitcode  : 2") >= 1
    # the only traceback is torchrun's own report of the failed workers, not one of rtpanoptic's
    assert 'raise RuntimeError("injected failure")' not in proc.stderr
    assert not (out / "metrics.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_silent_rank_times_out_with_a_one_line_error(setup):
    root, args, _ = setup
    script = root / "hang_rank1.py"
    script.write_text(FAILING.format(action="import time; time.sleep(600)"))
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), *args, "--output-dir", str(root / "hang"),
                                       "--dist-timeout", "20"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=300)
        assert procs[0].returncode == 2, err[-3000:]
        assert time.monotonic() - t0 < 280
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "rtpanoptic evaluate: error: rank 0 of 2: another rank did not answer while evaluation within 20 s"), err
        assert procs[1].poll() is None  # still asleep: rank 0 did not wait for it
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def _random_image(g: torch.Generator, k: int = 3):
    """Ground-truth boxes as masks, and predictions that are jittered copies plus false ones."""
    h = w = 48
    n = int(torch.randint(1, 4, (1,), generator=g))
    gt = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, 30, (2,), generator=g).tolist()
        gt[i, y:y + 15, x:x + 15] = True
    shift = torch.randint(-3, 4, (n, 2), generator=g)
    pred = torch.stack([torch.roll(gt[i], tuple(shift[i].tolist()), (0, 1)) for i in range(n)])
    extra = torch.zeros(2, h, w, dtype=torch.bool)
    extra[:, 40:, 40:] = True
    labels = torch.randint(0, k, (n,), generator=g)
    return (gt, labels, torch.cat([pred, extra]), torch.cat([labels, torch.randint(0, k, (2,), generator=g)]),
            torch.rand(n + 2, generator=g))


def test_ap_records_of_shards_merge_to_the_single_process_result():
    pytest.importorskip("pycocotools")
    from rtpanoptic.evaluation import InstanceAPEvaluator

    g = torch.Generator().manual_seed(0)
    images = [_random_image(g) for _ in range(9)]
    single = InstanceAPEvaluator(3)
    shards = [InstanceAPEvaluator(3), InstanceAPEvaluator(3)]
    for i, image in enumerate(images):
        single.update(*image)
        shards[i % 2].update(*image)
    records = [shards[0].image_records(), shards[1].image_records()]
    merged = InstanceAPEvaluator(3)
    merged.extend([records[i % 2][i // 2] for i in range(len(images))])
    assert merged.images == single.images and merged.gt == single.gt and merged.dt == single.dt
    want, got = single.compute(), merged.compute()
    assert 0.1 < want["AP"] < 0.99
    assert got == want
