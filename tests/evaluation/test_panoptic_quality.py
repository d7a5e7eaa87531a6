"""Panoptic quality: hand-computed cases from the definition (paper eq. 20, panopticapi rules),
file-based pq_compute (multi-process), error cases, and agreement with torchmetrics and with
cityscapesScripts' port of panopticapi."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rtpanoptic.data import SYNTHETIC
from rtpanoptic.data.panoptic_format import id2rgb
from rtpanoptic.evaluation import PanopticQualityEvaluator, PQError, pq_compute, sample_to_panoptic

# category 1 = thing "a", 2 = thing "b", 3 = stuff "s"
CATS = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "s", "isthing": 0},
]


def seg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


def evaluate(gt, gsegs, pred, psegs):
    ev = PanopticQualityEvaluator(CATS)
    ev.update(gt, gsegs, pred, psegs)
    return ev.compute(), ev.stat


def base_gt():
    gt = np.full((20, 20), 9, np.int64)  # stuff
    gt[0:10, 0:10] = 1  # thing a (100 px)
    gt[12:16, 12:20] = 2  # thing a (32 px)
    gt[0:5, 15:20] = 0  # void (25 px)
    return gt, [seg(9, 3), seg(1, 1), seg(2, 1)]


def test_perfect_prediction():
    gt, segs = base_gt()
    res, _ = evaluate(gt, segs, gt.copy(), [dict(s) for s in segs])
    for k in ("All", "Things", "Stuff"):
        assert res[k]["pq"] == res[k]["sq"] == res[k]["rq"] == 1.0
    assert res["All"]["n"] == 2 and res["Things"]["n"] == 1 and res["Stuff"]["n"] == 1
    assert res["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # absent class, not averaged


def test_one_missed_segment():
    gt, segs = base_gt()
    pred = gt.copy()
    pred[pred == 2] = 9  # thing 2 predicted as stuff
    res, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1)])
    assert st.tp.tolist() == [1, 0, 1] and st.fn.tolist() == [1, 0, 0] and st.fp.tolist() == [0, 0, 0]
    # stuff: pred 368 - 25 void... union = pred_area + gt_area - inter - pred_on_void
    stuff_gt = (gt == 9).sum()
    stuff_iou = stuff_gt / (stuff_gt + 32)
    assert res["per_class"][1]["pq"] == pytest.approx(1 / 1.5)
    assert res["per_class"][3]["pq"] == pytest.approx(stuff_iou)
    assert res["All"]["pq"] == pytest.approx((1 / 1.5 + stuff_iou) / 2)
    assert res["Things"]["sq"] == 1.0 and res["Things"]["rq"] == pytest.approx(2 / 3)


def test_prediction_split_in_two():
    gt, segs = base_gt()
    pred = gt.copy()
    pred[0:10, 6:10] = 7  # segment 1 split 60 / 40
    res, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(7, 1)])
    assert st.tp[0] == 2 and st.fp[0] == 1 and st.fn[0] == 0
    assert st.iou[0] == pytest.approx(1.0 + 0.6)
    assert res["per_class"][1]["pq"] == pytest.approx(1.6 / 2.5)
    assert res["per_class"][1]["sq"] == pytest.approx(0.8) and res["per_class"][1]["rq"] == pytest.approx(0.8)


def test_iou_exactly_half_is_not_a_match():
    gt, segs = base_gt()
    pred = gt.copy()
    pred[0:10, 5:10] = 9  # keeps 50 of 100 px, no extra: IoU = 0.5
    pred_segs = [seg(9, 3), seg(1, 1), seg(2, 1)]
    _, st = evaluate(gt, segs, pred, pred_segs)
    assert st.tp[0] == 1 and st.fn[0] == 1 and st.fp[0] == 1
    pred[0:10, 5] = 1  # 60 px: IoU 0.6 -> match
    _, st = evaluate(gt, segs, pred, pred_segs)
    assert st.tp[0] == 2 and st.fn[0] == 0 and st.iou[0] == pytest.approx(1.6)


def test_void_excluded_from_union_and_fp():
    gt, segs = base_gt()
    pred = gt.copy()
    pred[0:5, 10:15] = 1  # grow segment 1 by 25 px on stuff -> IoU 100/125
    pred[0:5, 15:20] = 5  # a prediction fully on void: ignored
    pred[5:10, 15:20] = 9
    psegs = [seg(9, 3), seg(1, 1), seg(2, 1), seg(5, 2)]
    _, st = evaluate(gt, segs, pred, psegs)
    assert st.iou[0] == pytest.approx(1 + 100 / 125) and st.fp.tolist() == [0, 0, 0]
    # the thing grown onto void instead: union ignores void pixels -> IoU 1
    pred2 = gt.copy()
    pred2[0:10, 0:10] = 1
    pred2[0:5, 15:20] = 1  # disconnected but same segment, all on void
    pred2[6:8, 12:15] = 6  # prediction 6 px: 0 on void -> FP
    _, st = evaluate(gt, segs, pred2, [seg(9, 3), seg(1, 1), seg(2, 1), seg(6, 2)])
    assert st.iou[0] == pytest.approx(2.0) and st.fp.tolist() == [0, 1, 0]


def test_unmatched_prediction_half_void_boundary():
    gt, segs = base_gt()
    pred = gt.copy()
    pred[0:5, 13:15] = 8  # 10 px on stuff ...
    pred[0:2, 15:20] = 8  # ... 10 px on void: exactly half -> still an FP (> 0.5 needed)
    _, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(8, 2)])
    assert st.fp[1] == 1
    pred[2, 15] = 8  # 11 / 21 on void -> ignored
    _, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(8, 2)])
    assert st.fp[1] == 0


def test_crowd():
    gt, segs = base_gt()
    gt[16:20, 0:10] = 4  # crowd of class b (40 px)
    segs = segs + [seg(4, 2, crowd=1)]
    pred = gt.copy()
    # prediction exactly on the crowd, class b: not matched (crowd), not FP (all on crowd), no FN
    _, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(4, 2)])
    assert st.tp.tolist() == [2, 0, 1] and st.fp.tolist() == [0, 0, 0] and st.fn.tolist() == [0, 0, 0]
    # same region predicted as class a: crowd of another class does not excuse it -> FP
    _, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(4, 1)])
    assert st.fp.tolist() == [1, 0, 0]
    # crowd + void together count towards the ignored part
    pred = gt.copy()
    pred[pred == 4] = 9
    pred[16:20, 0:3] = 4  # 12 px on crowd b
    pred[0:5, 15:17] = 4  # 10 px on void
    pred[10:12, 0:3] = 4  # 6 px on stuff: 22 / 28 ignored -> no FP
    _, st = evaluate(gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(4, 2)])
    assert st.fp[1] == 0


def test_errors_named():
    gt, segs = base_gt()
    ev = PanopticQualityEvaluator(CATS)
    with pytest.raises(PQError, match="unknown category id 42"):
        ev.update(gt, segs, gt, [seg(9, 3), seg(1, 1), seg(2, 42)], image_id="img7")
    with pytest.raises(PQError, match=r"img7 \(prediction\): segment ids \[2\]"):
        ev.update(gt, segs, gt, [seg(9, 3), seg(1, 1)], image_id="img7")
    with pytest.raises(PQError, match="same-size"):
        ev.update(gt, segs, gt[:5], segs)


# ---------------------------------------------------------------- files and processes
def _write_split(folder, json_path, maps, segs_list, cats=CATS):
    os.makedirs(folder, exist_ok=True)
    anns = []
    for i, (m, s) in enumerate(zip(maps, segs_list)):
        Image.fromarray(id2rgb(m)).save(os.path.join(folder, f"{i}.png"))
        anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": s})
    with open(json_path, "w") as f:
        json.dump({"annotations": anns, "categories": cats, "images": []}, f)


def random_pair(rng, h=24, w=32, pred_void=True, crowd=False):
    """Random gt (stuff blocks, thing rectangles, void, a crowd sometimes) and a perturbed prediction."""
    gt = np.where(np.arange(w)[None, :] < rng.integers(4, w - 4), 100, 101).repeat(h, 0).astype(np.int64)
    gsegs = [seg(100, 3), seg(101, 3)]  # two stuff segments of one class is fine for us; see torchmetrics test
    pred = gt.copy()
    psegs = [dict(s) for s in gsegs]
    for k in range(int(rng.integers(1, 6))):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        hh, ww = rng.integers(4, 11), rng.integers(4, 11)
        c = int(rng.integers(1, 3))
        gt[y : y + hh, x : x + ww] = k + 1
        gsegs.append(seg(k + 1, c))
        dy, dx = rng.integers(-1, 2, 2)
        pc = c if rng.random() < 0.8 else 3 - c
        pred[max(0, y + dy) : y + hh + dy, max(0, x + dx) : x + ww + dx] = 50 + k
        psegs.append(seg(50 + k, pc))
    if rng.random() < 0.5:
        gt[0:3, 0 : int(rng.integers(3, 12))] = 0
    if pred_void and rng.random() < 0.5:
        pred[-3:, -6:] = 0
    for k in range(int(rng.integers(0, 3)) if crowd else 0):  # sometimes two crowds of one class
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 8)
        gt[y : y + 6, x : x + 8] = 200 + k
        gsegs.append(seg(200 + k, int(rng.integers(1, 3)), crowd=1))
        if rng.random() < 0.5:
            pred[y + 1 : y + 5, x : x + 6] = 300 + k
            psegs.append(seg(300 + k, int(rng.integers(1, 3))))
    # drop listed segments that were fully painted over
    gsegs = [s for s in gsegs if (gt == s["id"]).any()]
    psegs = [s for s in psegs if (pred == s["id"]).any()]
    return gt, gsegs, pred, psegs


def test_pq_compute_files_match_in_memory_and_workers(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng) for _ in range(12)]
    _write_split(tmp_path / "gt", tmp_path / "gt.json", [p[0] for p in pairs], [p[1] for p in pairs])
    _write_split(tmp_path / "pred", tmp_path / "pred.json", [p[2] for p in pairs], [p[3] for p in pairs])
    r1 = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1, progress=False)
    r2 = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "gt", tmp_path / "pred", workers=2, progress=False)
    ev = PanopticQualityEvaluator(CATS)
    for p in pairs:
        ev.update(*p)
    r3 = ev.compute()
    assert r1 == r2
    for k in ("All", "Things", "Stuff"):
        assert set(r1[k]) == {"pq", "sq", "rq", "n"}
        for m in ("pq", "sq", "rq", "n"):
            assert r1[k][m] == pytest.approx(r3[k][m])
    assert set(r1["per_class"]) == {1, 2, 3}
    assert 0 < r1["All"]["pq"] < 1


def test_pq_compute_errors(tmp_path):
    gt, segs = base_gt()
    _write_split(tmp_path / "gt", tmp_path / "gt.json", [gt, gt], [segs, segs])
    _write_split(tmp_path / "pred", tmp_path / "pred.json", [gt], [segs])
    with pytest.raises(PQError, match="no prediction for the image with id 1"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1, progress=False)
    _write_split(tmp_path / "pred", tmp_path / "pred.json", [gt, gt], [segs, segs + [seg(77, 1)]])
    with pytest.raises(PQError, match=r"\[77\] are in segments_info but not in the PNG"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1, progress=False)
    (tmp_path / "pred.json").write_text("{")
    with pytest.raises(PQError, match="pred.json: malformed prediction JSON"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1, progress=False)
    os.remove(tmp_path / "pred" / "1.png")
    _write_split(tmp_path / "pred2", tmp_path / "pred2.json", [gt, gt], [segs, segs])
    os.remove(tmp_path / "pred2" / "1.png")
    with pytest.raises(PQError, match=r"pred2/1\.png: PNG not found"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred2.json", workers=1, progress=False)


def test_sample_to_panoptic_perfect():
    sem = torch.full((16, 16), 3, dtype=torch.int64)  # synthetic: train id 3 = sky (stuff)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:12, 8:12] = True
    crowd = torch.zeros(16, 16, dtype=torch.bool)
    crowd[0:2, 10:16] = True
    sem[masks[0]] = 0
    sem[masks[1]] = 2
    sem[crowd] = 1
    sem[15] = 255
    sample = {"semantic": sem, "instance_masks": masks, "labels": torch.tensor([0, 2]), "crowd_mask": crowd}
    ids, segs = sample_to_panoptic(sample, SYNTHETIC)
    assert sorted((s["category_id"], s["iscrowd"]) for s in segs) == [(0, 0), (1, 1), (2, 0), (3, 0)]
    assert (ids[15] == 0).all()
    ev = PanopticQualityEvaluator(SYNTHETIC, use_train_ids=True)
    crowd_ids = [s["id"] for s in segs if s["iscrowd"]]
    pred = np.where(np.isin(ids, crowd_ids), 0, ids)
    ev.update(ids, segs, pred, [s for s in segs if not s["iscrowd"]])
    r = ev.compute()
    assert r["All"]["pq"] == 1.0 and r["All"]["n"] == 3


# ---------------------------------------------------------------- independent implementation
def test_agrees_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.detection")
    rng = np.random.default_rng(1)
    # Definitions coincide when the prediction has no void pixels (torchmetrics also removes the
    # prediction's void from the union and filters FNs that are mostly predicted void), there is
    # no crowd, and stuff has one segment per class (torchmetrics merges stuff by category).
    for trial in range(15):
        gt, gsegs, pred, psegs = random_pair(rng, pred_void=False)
        gt = np.where(gt == 101, 100, gt)
        pred = np.where(pred == 101, 100, pred)
        gsegs = [s for s in gsegs if s["id"] != 101]
        psegs = [s for s in psegs if s["id"] != 101]
        ours = PanopticQualityEvaluator(CATS)
        ours.update(gt, gsegs, pred, psegs)
        r = ours.compute()

        def to_tm(m, segs, void_cat=0):
            cat = np.full(m.shape, void_cat, np.int64)
            for s in segs:
                cat[m == s["id"]] = s["category_id"]
            return torch.from_numpy(np.stack([cat, m], -1))[None]

        metric = tm.PanopticQuality(things={1, 2}, stuffs={3}, return_sq_and_rq=True, return_per_class=True)
        metric.update(to_tm(pred, psegs), to_tm(gt, gsegs))
        out = metric.compute()  # [1, C, 3] per class (pq, sq, rq) in sorted category order
        per = out.reshape(-1, 3)
        present = [c for c in (1, 2, 3) if ours.stat.tp[c - 1] + ours.stat.fp[c - 1] + ours.stat.fn[c - 1] > 0]
        for i, c in enumerate((1, 2, 3)):
            if c in present:
                assert r["per_class"][c]["pq"] == pytest.approx(float(per[i, 0]), abs=1e-6), (trial, c)
                assert r["per_class"][c]["sq"] == pytest.approx(float(per[i, 1]), abs=1e-6)
                assert r["per_class"][c]["rq"] == pytest.approx(float(per[i, 2]), abs=1e-6)
        m2 = tm.PanopticQuality(things={1, 2}, stuffs={3})
        m2.update(to_tm(pred, psegs), to_tm(gt, gsegs))
        assert r["All"]["pq"] == pytest.approx(float(m2.compute()), abs=1e-6)


def _assert_agrees_with_cityscapes_scripts(tmp_path, pairs):
    """Our pq_compute on ``pairs`` (gt, gt segments, prediction, predicted segments) equals
    cityscapesScripts' evaluator's (a port of COCO's panopticapi, on PyPI): PQ / SQ / RQ / n overall,
    for things, for stuff and per class.  Returns its results."""
    ref = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    import contextlib
    import io

    for p in pairs:
        for s in p[1]:
            s["area"] = int((p[0] == s["id"]).sum())  # the evaluator reads gt areas from the JSON
    _write_split(tmp_path / "gt", tmp_path / "gt.json", [p[0] for p in pairs], [p[1] for p in pairs])
    _write_split(tmp_path / "pred", tmp_path / "pred.json", [p[2] for p in pairs], [p[3] for p in pairs])
    ours = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1, progress=False)
    gt_json = json.loads((tmp_path / "gt.json").read_text())
    pred_json = {a["image_id"]: a for a in json.loads((tmp_path / "pred.json").read_text())["annotations"]}
    categories = {c["id"]: c for c in gt_json["categories"]}
    matched = [(a, pred_json[a["image_id"]]) for a in gt_json["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):  # (single process: its multi-core driver forks every CPU)
        stat = ref.pq_compute_single_core(0, matched, str(tmp_path / "gt"), str(tmp_path / "pred"), categories)
    theirs = ref.average_pq(stat, categories)
    for k in ("All", "Things", "Stuff"):
        for m in ("pq", "sq", "rq", "n"):
            assert ours[k][m] == pytest.approx(float(theirs[k][m]), abs=1e-12), (k, m)
    for c, v in theirs["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert ours["per_class"][c][m] == pytest.approx(float(v[m]), abs=1e-12), (c, m)
    return theirs


def test_agrees_with_cityscapes_scripts(tmp_path):
    """cityscapesScripts' evaluator as the oracle on random pairs, void and crowd included."""
    rng = np.random.default_rng(123)
    pairs = [random_pair(rng, crowd=True) for _ in range(60)]
    assert sum(s["iscrowd"] for p in pairs for s in p[1]) >= 10  # crowds do take part
    theirs = _assert_agrees_with_cityscapes_scripts(tmp_path, pairs)
    assert theirs["per_class"] and 0 < theirs["All"]["pq"] < 1


def _two_crowds_of_one_class(over: int):
    """base_gt plus two crowd regions of class b: id 4 (rows 16-19, columns 0-9, listed first) and id 5
    (rows 16-19, columns 10-19, listed last); the prediction is the gt with one unmatched class-b
    segment (id 7) exactly on crowd ``over`` and the other crowd predicted as stuff."""
    gt, segs = base_gt()
    gt[16:20, 0:10] = 4
    gt[16:20, 10:20] = 5
    segs = segs + [seg(4, 2, crowd=1), seg(5, 2, crowd=1)]
    pred = gt.copy()
    pred[(gt == 4) | (gt == 5)] = 9
    pred[gt == over] = 7
    return gt, segs, pred, [seg(9, 3), seg(1, 1), seg(2, 1), seg(7, 2)]


@pytest.mark.parametrize("over,fp", [(5, 0), (4, 1)])
def test_several_crowd_regions_of_one_class(tmp_path, over, fp):
    """panopticapi keeps one crowd region per class and image, the last listed (a dict overwritten
    per crowd segment): an unmatched class-b prediction on the last crowd (id 5) is ignored (40 of its
    40 pixels on that crowd), one on the first crowd (id 4) is a false positive (0 of 40 counted).
    Hand-computed: things a: 2 TP (IoU 1); b: fp FP and nothing else; stuff s: 1 TP, gt 400 - 25 void
    - 100 - 32 - 80 crowd = 163 pixels, predicted on those and the other crowd's 40 (a crowd pixel is
    not void: it stays in the union), IoU 163 / 203 -- and cityscapesScripts' evaluator agrees."""
    gt, segs, pred, psegs = _two_crowds_of_one_class(over)
    _, st = evaluate(gt, segs, pred, psegs)
    assert st.tp.tolist() == [2, 0, 1] and st.fn.tolist() == [0, 0, 0] and st.fp.tolist() == [0, fp, 0]
    assert st.iou.tolist() == pytest.approx([2.0, 0.0, 163 / 203])
    theirs = _assert_agrees_with_cityscapes_scripts(tmp_path, [(gt, segs, pred, psegs)])
    assert theirs["per_class"][2]["pq"] == 0.0 and float(theirs["Things"]["n"]) == (2 if fp else 1)


def test_empty_cases():
    void = np.zeros((4, 4), np.int64)
    ev = PanopticQualityEvaluator(CATS)
    ev.update(void, [], void, [])
    assert ev.compute()["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    gt = np.full((4, 4), 3, np.int64)
    ev.update(gt, [seg(3, 1)], void, [seg(9, 2)])  # missed; a zero-pixel prediction is skipped in memory
    assert ev.stat.fn.tolist() == [1, 0, 0] and ev.stat.fp.tolist() == [0, 0, 0]
    assert ev.compute()["Things"]["n"] == 1 and ev.compute()["Things"]["pq"] == 0.0
