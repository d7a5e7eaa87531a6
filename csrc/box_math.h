// Box scores shared by the CPU and CUDA kernels, with their hand-written derivatives.
//
// Every formula follows rtpanoptic/ops/reference.py operation by operation (same
// association order, so float32 results match the reference), and every derivative
// follows what PyTorch's autograd does on the reference:
//   * clamp(min=0) passes the gradient only where its input is > 0 (0 at exactly 0);
//   * torch.min / torch.max split the gradient in halves between equal arguments;
//   * "iou": torch.where(union != 0, inter / union, 0) -> score and gradient 0 where union == 0.
// NaN/inf coordinates: the arithmetic propagates them (a NaN box gets a NaN score, which
// then never passes a ">" threshold); no kernel branches on them, so nothing hangs.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RTP_HD __host__ __device__ __forceinline__
#else
#define RTP_HD inline
#endif

namespace rtpanoptic {

// Added to the enclosing-box area of the "tri" score (reference.TRI_EPS).
constexpr double kTriEps = 1e-7;

enum class Score : int { kIoU = 0, kTri = 1 };

template <typename T>
RTP_HD T rtp_min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
RTP_HD T rtp_max(T a, T b) {
  return b > a ? b : a;
}
// torch.minimum / torch.maximum propagate NaN; so do these.
template <typename T>
RTP_HD T nan_min(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (b < a ? b : a));
}
template <typename T>
RTP_HD T nan_max(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (b > a ? b : a));
}
// d min(a, b) / da following autograd: 1 if a < b, 1/2 if equal, 0 otherwise.
template <typename T>
RTP_HD T dmin_da(T a, T b) {
  return a < b ? T(1) : (a == b ? T(0.5) : T(0));
}
template <typename T>
RTP_HD T dmax_da(T a, T b) {
  return a > b ? T(1) : (a == b ? T(0.5) : T(0));
}

// Score of box d against box q (both xyxy), as reference.pairwise_box_score.
template <typename T>
RTP_HD T box_score(T d0, T d1, T d2, T d3, T q0, T q1, T q2, T q3, Score score) {
  const T iw_raw = nan_min(d2, q2) - nan_max(d0, q0);
  const T ih_raw = nan_min(d3, q3) - nan_max(d1, q1);
  const T iw = iw_raw != iw_raw ? iw_raw : rtp_max(iw_raw, T(0));
  const T ih = ih_raw != ih_raw ? ih_raw : rtp_max(ih_raw, T(0));
  const T inter = iw * ih;
  const T area_d = (d2 - d0) * (d3 - d1);
  const T area_q = (q2 - q0) * (q3 - q1);
  const T uni = (area_d + area_q) - inter;
  if (score == Score::kIoU) {
    return uni != T(0) ? inter / uni : T(0);
  }
  const T cw = nan_max(d2, q2) - nan_min(d0, q0);
  const T ch = nan_max(d3, q3) - nan_min(d1, q1);
  const T enclosing = cw * ch + T(kTriEps);
  return (inter + T(1)) / (uni + T(1)) - (enclosing - uni) / enclosing;
}

// Gradient of g * score(d, q) w.r.t. the 4 coordinates of d and of q (accumulated into gd, gq).
template <typename T>
RTP_HD void box_score_backward(T g, T d0, T d1, T d2, T d3, T q0, T q1, T q2, T q3, Score score, T* gd,
                               T* gq) {
  const T iw_raw = nan_min(d2, q2) - nan_max(d0, q0);
  const T ih_raw = nan_min(d3, q3) - nan_max(d1, q1);
  const bool iw_pos = iw_raw > T(0);
  const bool ih_pos = ih_raw > T(0);
  const T iw = iw_pos ? iw_raw : (iw_raw != iw_raw ? iw_raw : T(0));
  const T ih = ih_pos ? ih_raw : (ih_raw != ih_raw ? ih_raw : T(0));
  const T inter = iw * ih;
  const T area_d = (d2 - d0) * (d3 - d1);
  const T area_q = (q2 - q0) * (q3 - q1);
  const T uni = (area_d + area_q) - inter;
  T g_inter, g_uni;
  T g_cw = T(0), g_ch = T(0);
  if (score == Score::kIoU) {
    if (!(uni != T(0))) return;  // where(union != 0, ., 0): no gradient at all
    g_inter = g / uni;
    g_uni = -g * inter / (uni * uni);
  } else {
    const T cw = nan_max(d2, q2) - nan_min(d0, q0);
    const T ch = nan_max(d3, q3) - nan_min(d1, q1);
    const T enclosing = cw * ch + T(kTriEps);
    const T u1 = uni + T(1);
    g_inter = g / u1;
    // -(E - U)/E: d/dU = 1/E, d/dE = -1/E + (E - U)/E^2
    g_uni = -g * (inter + T(1)) / (u1 * u1) + g / enclosing;
    const T g_enc = -g / enclosing + g * (enclosing - uni) / (enclosing * enclosing);
    g_cw = g_enc * ch;
    g_ch = g_enc * cw;
  }
  // union = area_d + area_q - inter
  const T g_int_total = g_inter - g_uni;
  const T g_iw = iw_pos ? g_int_total * ih : T(0);
  const T g_ih = ih_pos ? g_int_total * iw : T(0);
  // area_d = (d2 - d0) * (d3 - d1)
  const T wd = d2 - d0, hd = d3 - d1, wq = q2 - q0, hq = q3 - q1;
  gd[0] += -g_uni * hd;
  gd[2] += g_uni * hd;
  gd[1] += -g_uni * wd;
  gd[3] += g_uni * wd;
  gq[0] += -g_uni * hq;
  gq[2] += g_uni * hq;
  gq[1] += -g_uni * wq;
  gq[3] += g_uni * wq;
  // iw = min(d2, q2) - max(d0, q0)
  gd[2] += g_iw * dmin_da(d2, q2);
  gq[2] += g_iw * dmin_da(q2, d2);
  gd[0] -= g_iw * dmax_da(d0, q0);
  gq[0] -= g_iw * dmax_da(q0, d0);
  gd[3] += g_ih * dmin_da(d3, q3);
  gq[3] += g_ih * dmin_da(q3, d3);
  gd[1] -= g_ih * dmax_da(d1, q1);
  gq[1] -= g_ih * dmax_da(q1, d1);
  if (score == Score::kTri) {
    // cw = max(d2, q2) - min(d0, q0)
    gd[2] += g_cw * dmax_da(d2, q2);
    gq[2] += g_cw * dmax_da(q2, d2);
    gd[0] -= g_cw * dmin_da(d0, q0);
    gq[0] -= g_cw * dmin_da(q0, d0);
    gd[3] += g_ch * dmax_da(d3, q3);
    gq[3] += g_ch * dmax_da(q3, d3);
    gd[1] -= g_ch * dmin_da(d1, q1);
    gq[1] -= g_ch * dmin_da(q1, d1);
  }
}

// Bilinear source index and weights of F.interpolate(align_corners=False) along one axis.
template <typename T>
RTP_HD void bilinear_coeffs(int64_t out_index, int64_t in_size, T scale, int64_t* i0, int64_t* i1, T* w0, T* w1) {
  T src = scale * (static_cast<T>(out_index) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  int64_t lo = static_cast<int64_t>(src);
  if (lo > in_size - 1) lo = in_size - 1;
  const int64_t step = lo < in_size - 1 ? 1 : 0;
  const T l1 = src - static_cast<T>(lo);
  *i0 = lo;
  *i1 = lo + step;
  *w1 = l1;
  *w0 = T(1) - l1;
}

// torch.argmax semantics: first maximum, NaN counts as the maximum (first NaN wins).
template <typename T>
RTP_HD bool argmax_better(T v, T best) {
  return (v > best) || (v != v && best == best);
}

}  // namespace rtpanoptic
