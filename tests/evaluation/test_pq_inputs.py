"""pq_compute on malformed ground truth / predictions: errors naming the file and the entry
(as the dataset loader does), and no silent PQ 0 for an empty ground truth (issue 12)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from rtpanoptic.data.panoptic_format import id2rgb
from rtpanoptic.evaluation import pq_compute
from rtpanoptic.evaluation.panoptic_quality import PQError

CATEGORIES = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]


def _files(tmp_path, gt_ann_edit=None, pred_ann_edit=None, gt_annotations=None):
    ids = np.zeros((4, 4), np.int64)
    ids[:2] = 1
    ids[2:] = 2
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0}]
    for side in ("gt", "pred"):
        (tmp_path / side).mkdir()
        Image.fromarray(id2rgb(ids)).save(tmp_path / side / "x.png")
    gt_ann = {"image_id": "x", "file_name": "x.png", "segments_info": copy.deepcopy(segs)}
    pred_ann = copy.deepcopy(gt_ann)
    if gt_ann_edit:
        gt_ann_edit(gt_ann)
    if pred_ann_edit:
        pred_ann_edit(pred_ann)
    gt = {"annotations": [gt_ann] if gt_annotations is None else gt_annotations, "categories": CATEGORIES}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [pred_ann]}))
    return tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "gt", tmp_path / "pred"


def _pq(files):
    return pq_compute(*[str(f) for f in files], workers=0, progress=False)


def test_well_formed_files_score_one(tmp_path):
    assert _pq(_files(tmp_path))["All"]["pq"] == 1.0


@pytest.mark.parametrize(
    "edit, side, match",
    [
        (lambda a: a.pop("file_name"), "gt", r"gt\.json: annotations\[0\] \(image_id 'x'\) lacks 'file_name'"),
        (lambda a: a.pop("segments_info"), "gt", r"gt\.json: annotations\[0\] \(image_id 'x'\) lacks 'segments_info'"),
        (lambda a: a.pop("image_id"), "gt", r"gt\.json: annotations\[0\] lacks 'image_id'"),
        (lambda a: a.update(segments_info=None), "gt", r"gt\.json: annotations\[0\].*'segments_info' must be a list"),
        (lambda a: a["segments_info"][1].pop("id"), "gt", r"gt\.json: annotations\[0\].*segments_info\[1\] lacks 'id'"),
        (lambda a: a["segments_info"][0].pop("category_id"), "gt",
         r"gt\.json: annotations\[0\].*segments_info\[0\] lacks 'category_id'"),
        (lambda a: a["segments_info"].append(7), "gt", r"gt\.json: annotations\[0\].*segments_info\[2\] is not an object"),
        (lambda a: a.update(segments_info=None), "pred", r"pred\.json: annotations\[0\].*'segments_info' must be a list"),
        (lambda a: a["segments_info"][0].pop("id"), "pred", r"pred\.json: annotations\[0\].*segments_info\[0\] lacks 'id'"),
    ],
)
def test_malformed_annotations_name_file_and_entry(tmp_path, edit, side, match):
    files = _files(tmp_path, **{f"{side}_ann_edit": edit})
    with pytest.raises(PQError, match=match) as info:
        _pq(files)
    assert "\n" not in str(info.value)


def test_annotation_that_is_not_an_object(tmp_path):
    files = _files(tmp_path, gt_annotations=["x.png"])
    with pytest.raises(PQError, match=r"gt\.json: annotations\[0\] is not an object"):
        _pq(files)


def test_empty_ground_truth_is_refused(tmp_path):
    files = _files(tmp_path, gt_annotations=[])
    with pytest.raises(PQError, match=r"gt\.json.*no annotations"):
        _pq(files)
