// Schemas of every rtpanoptic op, as in the op table rtpanoptic/ops/registry.py (one row per op;
// tests/ops/test_registry.py checks that both spell every schema the same).  Kernels live beside
// this file:
//   csrc/cpu/<op>_kernel.cpp   (TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m))
//   csrc/cuda/<op>_kernel.cu   (TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m))
// Fake (meta) implementations and autograd formulas are registered from that table.
// The Python reference implementations in rtpanoptic/ops/reference.py are the
// specification every kernel is tested against.
#include <torch/library.h>

TORCH_LIBRARY(rtpanoptic, m) {
  // Boxes are xyxy, absolute pixels, no +1 on areas (torchvision's convention).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  // offsets [B,4,h,w] (l,t,r,b) -> boxes [B,4,h,w] (x1,y1,x2,y2), paper eq. 8.
  m.def("decode_boxes(Tensor offsets, int stride) -> Tensor");
  // per-level offsets [B,4,h_i,w_i], levelness logits [B,L+1,H,W] -> (boxes [B,4,H,W], fg bool [B,H,W]), eq. 14.
  m.def("gather_levelness(Tensor[] offsets, Tensor levelness, int out_stride) -> (Tensor, Tensor)");
  // dense boxes [4,H,W], query boxes [Q,4] -> P_loc [Q,H,W], eq. 6.  score: "iou" | "tri".
  m.def("iou_attention(Tensor dense_boxes, Tensor query_boxes, str score) -> Tensor");
  // Mask construction (eqs. 5, 7) and panoptic fusion.  Queries at or beyond num_queries (0-d int64;
  // None: all) are absent.  Fixed size: Q + C segment slots padded with class -1, query -1, score 0,
  // area 0, and the segment count (0-d int64), computed on the device.
  m.def(
      "panoptic_from_dense(Tensor dense_boxes, Tensor sem_probs, Tensor query_boxes, Tensor query_classes, "
      "Tensor query_scores, Tensor is_thing, float sigma, str score, float score_threshold, "
      "float overlap_threshold, int stuff_area_limit, Tensor? num_queries=None) -> "
      "(Tensor segment_map, Tensor segment_class, Tensor segment_query, Tensor segment_score, Tensor segment_area, "
      "Tensor segment_count)");
  // The release's masks (x stride bilinear, >= sigma) at [height, width], then the same fusion.
  m.def(
      "panoptic_from_dense_release(Tensor dense_boxes, Tensor sem_probs, Tensor query_boxes, Tensor query_classes, "
      "Tensor query_scores, Tensor is_thing, int stride, int height, int width, float sigma, str score, "
      "float score_threshold, float overlap_threshold, int stuff_area_limit, bool fma) -> "
      "(Tensor segment_map, Tensor segment_class, Tensor segment_query, Tensor segment_score, Tensor segment_area)");
  // Explicit mask loss (eqs. 16-18).
  m.def(
      "mask_loss(Tensor dense_boxes, Tensor query_boxes, Tensor gt_masks, Tensor beta, Tensor batch_index) -> Tensor");
  // Query selection: class-aware NMS, optional class-agnostic NMS (global_nms_thresh < 0: off),
  // top_n -> (indices [min(top_n, N)] padded with -1, count), fixed size on every backend.
  m.def(
      "select_queries(Tensor boxes, Tensor scores, Tensor labels, float nms_thresh, float global_nms_thresh, "
      "int top_n) -> (Tensor, Tensor)");
  // logits [B,C,h,w] -> [B,crop_h,crop_w] class indices: argmax over C of the bilinear resize to
  // size, in out_dtype (None: int64; int32, int16 or uint8 where the classes fit).
  m.def("upsample_argmax(Tensor logits, int[] size, int[] crop, ScalarType? out_dtype=None) -> Tensor");
  // Internal, CPU only, no row in the op table (called by rtpanoptic/ops/upsample.py's semantic_probs
  // where ATen's CPU arithmetic is the one reproduced): logits [B,C,h,w] float32 contiguous ->
  // F.interpolate(size, bilinear, align_corners=False) [B,C,H,W], then .softmax(dim=1) with softmax;
  // fma: whether ATen's CPU kernel rounds a * b + c once (its AVX2/AVX-512 builds).
  m.def("_bilinear_softmax(Tensor logits, int[] size, bool fma, bool softmax) -> Tensor");

  // Backward kernels, called by the autograd formulas of rtpanoptic/ops/registry.py
  // (decode_boxes' backward is a sign flip written there with plain tensor ops).
  // Gradient w.r.t. every level's offsets (levelness gets none: argmax is piecewise constant).
  m.def("_gather_levelness_backward(Tensor grad_boxes, Tensor[] offsets, Tensor levelness, int out_stride) -> Tensor[]");
  // (grad_dense_boxes [4,H,W], grad_query_boxes [Q,4]) from grad [Q,H,W].
  m.def("_iou_attention_backward(Tensor grad, Tensor dense_boxes, Tensor query_boxes, str score) -> (Tensor, Tensor)");
  // (grad_dense_boxes [B,4,H,W], grad_query_boxes [Q,4]) from the scalar grad of mask_loss.
  m.def(
      "_mask_loss_backward(Tensor grad, Tensor dense_boxes, Tensor query_boxes, Tensor gt_masks, Tensor beta, "
      "Tensor batch_index) -> (Tensor, Tensor)");
}
