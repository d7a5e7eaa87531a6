// Upper bounds of box_score (box_math.h) in floating point, with their proofs: they let the CPU
// panoptic_from_dense kernel skip ("cull") chunks of pixels whose mask bits
//   M_j(p) = fl(score(d_p, q_j) * prob_p) > sig
// are certainly 0, without changing a single bit (the kernel states which chunk tests use them).
//
// Notation.  T is float (p = 24 significand bits) or double (p = 53), u = 2^-p the unit roundoff,
// eta the least positive subnormal, emax = numeric_limits<T>::max_exponent (T's largest finite
// value is below 2^emax).  fl(.) is one IEEE-754 operation rounded to nearest (the default mode;
// the kernels use no FMA and no excess precision, simd.h).  What the proofs use of fl:
//   (R1) rounding is monotone: x <= y  =>  fl(x) <= fl(y); fl(x) = x for a representable x;
//   (R2) without overflow, fl(a +- b) = (a +- b)(1 + d) and fl(a * b), fl(a / b) =
//        (a op b)(1 + d) + e, with |d| <= u, |e| <= eta / 2 (e: underflow; sums underflow exactly);
//        a flush-to-zero mode gives |e| below T's least normal, which the slack below absorbs too;
//   (R3) "x > sig" is false when x or sig is NaN.
//
// Bounded boxes.  A box b (a dense box or a query) is *bounded* when b2 >= b0, b3 >= b1 and every
// |b_k| <= L = 2^((emax - 8) / 2) (2^60 for float, 2^508 for double): no NaN, no inf, not inverted.
// For bounded d and q nothing in box_score overflows (widths <= 2L, areas <= 4L^2 = 2^(emax - 6),
// sums <= 2^(emax - 5), and the ratios are bounded below), so (R2) applies to every operation.
//
// Theorem.  For bounded d and q, the "tri" score computed by box_score (box_math.h: iw, ih, I, A_d,
// A_q, S = fl(A_d + A_q), U = fl(S - I), cw, ch, P = fl(cw * ch), E = fl(P + eps), eps = T(1e-7),
// t1 = fl(fl(I + 1) / fl(U + 1)), t2 = fl(fl(E - U) / E), tri = fl(t1 - t2)) satisfies
//   (a) 0 <= t1 <= 1,  (b) t2 >= -21u > -kSlack = -2^(8-p),  hence  tri <= fl(1 + kSlack) = 1 + kSlack;
//   (c) if I = +-0 (the boxes do not overlap): t1 <= fl(1 / fl(A_q + 1)), hence
//       tri <= fl(fl(1 / fl(A_q + 1)) + kSlack)  (disjoint_tri_bound below).
// Proof.  Write x* for exact values of the same formulas on the (exact) input coordinates: w_d =
// d2 - d0 >= 0, ..., iw* = max(0, min(d2, q2) - max(d0, q0)), cw* = max(d2, q2) - min(d0, q0), I* =
// iw* ih*, U* = A_d* + A_q* - I*, C* = cw* ch*.  Geometry: the union of the two rectangles lies in
// their enclosing rectangle, so C* >= U* >= max(A_d*, A_q*) >= I* >= 0.
// (a) min(d2, q2) - max(d0, q0) <= d2 - d0, so by (R1) iw <= fl(d2 - d0) = wd; likewise ih <= hd,
//     and all are >= 0 (iw is +-0 when its raw difference is <= 0), so I <= A_d and I <= A_q (R1).
//     Then S >= fl(I + I) = 2I and U >= fl(2I - I) = I (R1; 2I is exact), so 1 <= fl(I + 1) <=
//     fl(U + 1) and t1 = fl(a / b) with 0 < a <= b lies in (0, fl(b / b)] = (0, 1].
// (b) Each difference (wd, hd, iw, cw, ...) is exact * (1 + d) (R2), so A_d <= A_d*(1+u)^3 + eta/2,
//     A_q likewise, I >= I*(1-u)^3 - eta/2, P >= C*(1-u)^3 - eta/2.  Then (using (1+u)^4 <= 1 + 5u,
//     (1+u)^4 - (1-u)^3 <= 8u, A_d* + A_q* = U* + I* and I* <= U*):
//       U <= (S - I)(1+u) <= [(A_d* + A_q*)(1+u)^4 + eta(1+u) - I*(1-u)^3 + eta/2](1+u)
//         <= [U*(1 + 13u) + 2 eta](1+u) <= U*(1 + 15u) + 3 eta;
//       E >= (P + eps)(1-u) >= C*(1-4u) + (eps - eta)(1-u)   (E = fl(P + eps) with P + eps > 0).
//     With (1 + 20u)(1 - 4u) >= 1 + 15u, C* >= U* and eps ~ 1e-7 >= 8 eta:
//       (1 + 20u) E >= (1 + 15u) C* + eps/2 >= U*(1 + 15u) + 3 eta >= U,   i.e.  U <= (1 + k) E, k = 20u.
//     E >= eps > 0.  If E >= U, t2 >= 0.  Otherwise fl(E - U) >= (E - U)(1+u) >= -k(1+u) E, and
//     t2 = fl(fl(E - U) / E) >= -k(1+u)^2 - eta/2 >= -21u.  (Here |t2| <= 1: no overflow.)
//     So the exact t1 - t2 <= t1 + kSlack and by (R1) tri <= fl(t1 + kSlack) <= fl(1 + kSlack).
// (c) I = +-0 gives fl(I + 1) = 1 and U = fl(S -+ 0) = S = fl(A_d + A_q) >= A_q (R1, A_d >= 0),
//     so t1 = fl(1 / fl(U + 1)) <= fl(1 / fl(A_q + 1)) (R1 twice, both positive); then as in (b).
//     A_q here is box_score's (q2 - q0) * (q3 - q1), the same operations as Queries::area.      QED
//
// Corollary (the cull).  Let 0 <= prob_p <= m for the chunk's pixels whose product is not NaN
// (-0 counts as 0), and tri <= B with B >= 0.  Then tri * prob <= B * prob <= B * m exactly, and by
// (R1) fl(tri * prob) <= fl(B * m): if fl(B * m) <= sig, no bit of the chunk is set (a NaN tri or
// prob gives a NaN product, (R3)).  Nothing assumes sig >= 0 or sig finite; a chunk with a negative
// probability gets m = +inf (chunk_prob_max), which culls only when sig = +inf (nothing passes then).
// A dense box with a NaN area (a NaN coordinate, or inf * 0) has a NaN union, hence a NaN score for
// either score and any query: such pixels never set a bit and need no bound.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

namespace rtpanoptic {

template <typename T>
struct TriBounds {
  static_assert(std::numeric_limits<T>::digits == 24 || std::numeric_limits<T>::digits == 53, "float or double");
  static constexpr bool kFloat = std::numeric_limits<T>::digits == 24;
  // L = 2^((emax - 8) / 2)
  static constexpr T kLimit = kFloat ? T(0x1p60) : T(0x1p508);
  // 2^(8 - p): above the 21u of (b), with room to spare
  static constexpr T kSlack = kFloat ? T(0x1p-16) : T(0x1p-45);
  // (b): tri <= 1 + kSlack for bounded boxes (exactly representable)
  static constexpr T kAny = T(1) + kSlack;
};

// Whether box (b0, b1, b2, b3) is bounded (see above); false for NaN coordinates.
template <typename T>
inline bool bounded_box(T b0, T b1, T b2, T b3) {
  const T l = TriBounds<T>::kLimit;
  return b2 >= b0 && b3 >= b1 && std::abs(b0) <= l && std::abs(b1) <= l && std::abs(b2) <= l && std::abs(b3) <= l;
}

// (c): the bound of tri(d, q) over bounded dense boxes d that do not overlap the bounded query q
// whose area (q2 - q0) * (q3 - q1) is area_q.
template <typename T>
inline T disjoint_tri_bound(T area_q) {
  return T(1) / (area_q + T(1)) + TriBounds<T>::kSlack;
}

}  // namespace rtpanoptic
