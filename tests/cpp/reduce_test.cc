// Reduction kernels against scalar expectations, including aliasing.
#include "chorus/algorithms/reduce.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "chorus/common/error.h"

namespace chorus {
namespace {

TEST(Reduce, SumInt32WrapsLikeNumpy) {
  std::vector<int32_t> a{1, std::numeric_limits<int32_t>::max(), -5};
  std::vector<int32_t> b{2, 1, 5};
  reduce_kernel(Dtype::Int32, ReduceOp::Sum)(a.data(), a.data(), b.data(), a.size());
  EXPECT_EQ(a[0], 3);
  EXPECT_EQ(a[1], std::numeric_limits<int32_t>::min());
  EXPECT_EQ(a[2], 0);
}

TEST(Reduce, MaxFloatPropagatesNan) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> a{1.f, nan, 3.f}, b{2.f, 0.f, nan}, out(3);
  reduce_kernel(Dtype::Float32, ReduceOp::Max)(out.data(), a.data(), b.data(), 3);
  EXPECT_EQ(out[0], 2.f);
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_TRUE(std::isnan(out[2]));
}

TEST(Reduce, BoolSumIsLogicalOr) {
  bool a[3] = {false, true, false}, b[3] = {false, false, true};
  reduce_kernel(Dtype::Bool, ReduceOp::Sum)(a, a, b, 3);
  EXPECT_FALSE(a[0]);
  EXPECT_TRUE(a[1]);
  EXPECT_TRUE(a[2]);
}

TEST(Reduce, Float16SumRoundsPerOp) {
  // 1.0 and 2.0 in IEEE half.
  uint16_t a[1] = {0x3c00}, b[1] = {0x4000};
  reduce_kernel(Dtype::Float16, ReduceOp::Sum)(a, a, b, 1);
  EXPECT_EQ(a[0], 0x4200);  // 3.0
}

// bfloat16 against a reference written here independently of the kernel:
// ml_dtypes' float32 -> bfloat16 cast, i.e. keep the top 16 bits and round
// the dropped low 16 to nearest, ties to even; NaN becomes the quiet NaN of
// its sign. The kernels must match it bit for bit.
float bf16_value(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

uint16_t bf16_round(float f) {
  if (std::isnan(f)) return std::signbit(f) ? 0xffc0 : 0x7fc0;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  uint32_t upper = bits >> 16;
  const uint32_t dropped = bits & 0xffff;
  if (dropped > 0x8000 || (dropped == 0x8000 && (upper & 1) != 0)) ++upper;  // may carry to inf
  return static_cast<uint16_t>(upper);
}

// The reference op in float, then rounded; max/min propagate NaN (first
// operand first), as the float kernels and np.maximum do.
uint16_t bf16_reference(ReduceOp op, uint16_t a, uint16_t b) {
  const float x = bf16_value(a), y = bf16_value(b);
  float r = 0;
  switch (op) {
    case ReduceOp::Sum: r = x + y; break;
    case ReduceOp::Max: r = std::isnan(x) ? x : std::isnan(y) ? y : (x > y ? x : y); break;
    case ReduceOp::Min: r = std::isnan(x) ? x : std::isnan(y) ? y : (x < y ? x : y); break;
  }
  return bf16_round(r);
}

uint16_t bf16_apply(ReduceOp op, uint16_t a, uint16_t b) {
  uint16_t out = 0;
  reduce_kernel(Dtype::BFloat16, op)(&out, &a, &b, 1);
  return out;
}

constexpr uint16_t kOne = 0x3f80, kInf = 0x7f80, kNegInf = 0xff80, kMaxFinite = 0x7f7f;
constexpr uint16_t kNan = 0x7fc0;

bool quiet_nan(uint16_t bits) { return (bits & 0x7fc0) == 0x7fc0; }

TEST(Reduce, BFloat16SumRoundsToNearestEven) {
  EXPECT_EQ(dtype_size(Dtype::BFloat16), 2u);
  EXPECT_STREQ(dtype_name(Dtype::BFloat16), "bfloat16");
  // Ties: 1 + 2^-8 is half an ulp above 1.0 (even: stays); 1+2^-7 is odd, so
  // adding 2^-8 rounds up to 1+2^-6.
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kOne, 0x3b80), kOne);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x3f81, 0x3b80), 0x3f82);
  // Above and below a tie: 1 + (2^-8 + 2^-15) rounds up, 1 + 2^-9 down.
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kOne, 0x3b81), 0x3f81);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kOne, 0x3b00), kOne);
  // Not a tie: 1 + 1.25 * 2^-7 rounds down to 1 + 2^-7.
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kOne, 0x3c20), 0x3f81);
  // Overflow: max + max, and max + half an ulp (a tie that rounds to even: inf).
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kMaxFinite, kMaxFinite), kInf);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kMaxFinite, 0x7b00), kInf);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0xff7f, 0xfb00), kNegInf);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kMaxFinite, 0x7a80), kMaxFinite);  // a quarter ulp
  // Infinities.
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kInf, kOne), kInf);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, kNegInf, kMaxFinite), kNegInf);
  EXPECT_TRUE(quiet_nan(bf16_apply(ReduceOp::Sum, kInf, kNegInf)));
  // NaN stays NaN and quiet, whatever its payload (0x7f81 is a signalling
  // NaN): the quiet NaN of its sign, as ml_dtypes' cast gives.
  for (uint16_t nan : {uint16_t{0x7fc0}, uint16_t{0x7f81}, uint16_t{0x7fff}, uint16_t{0xffc1}}) {
    const uint16_t want = (nan & 0x8000) | 0x7fc0;
    EXPECT_EQ(bf16_apply(ReduceOp::Sum, nan, kOne), want) << std::hex << nan;
    EXPECT_EQ(bf16_apply(ReduceOp::Sum, kInf, nan), want) << std::hex << nan;
    EXPECT_EQ(bf16_apply(ReduceOp::Max, nan, kInf), want) << std::hex << nan;
    EXPECT_EQ(bf16_apply(ReduceOp::Min, kNegInf, nan), want) << std::hex << nan;
  }
  // Subnormals (bfloat16 has float32's exponent range): exact sums, a carry
  // into the smallest normal, a tie near it, and a difference of normals
  // that is subnormal.
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x0001, 0x0001), 0x0002);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x007f, 0x0001), 0x0080);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x0100, 0x0001), 0x0100);  // 2^-125 + 2^-133: tie, even
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x0101, 0x0001), 0x0102);  // tie, odd: up
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x0081, 0x8080), 0x0001);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x8001, 0x8001), 0x8002);
  // Negative zero: -0 + -0 is -0, -0 + 0 is +0, x + -x is +0.
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x8000, 0x8000), 0x8000);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x8000, 0x0000), 0x0000);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x3fc0, 0xbfc0), 0x0000);
  EXPECT_EQ(bf16_apply(ReduceOp::Sum, 0x8000, 0x0001), 0x0001);
}

TEST(Reduce, BFloat16MaxMinPropagateNan) {
  EXPECT_EQ(bf16_apply(ReduceOp::Max, kOne, 0x4000), 0x4000);
  EXPECT_EQ(bf16_apply(ReduceOp::Min, kOne, 0x4000), kOne);
  EXPECT_EQ(bf16_apply(ReduceOp::Max, 0xc000, kNegInf), 0xc000);
  EXPECT_EQ(bf16_apply(ReduceOp::Min, 0x0001, 0x8001), 0x8001);  // subnormals keep their sign
  EXPECT_EQ(bf16_apply(ReduceOp::Max, kInf, kMaxFinite), kInf);
  for (ReduceOp op : {ReduceOp::Max, ReduceOp::Min}) {
    EXPECT_EQ(bf16_apply(op, kNan, kOne), kNan);
    EXPECT_EQ(bf16_apply(op, kOne, kNan), kNan);
    EXPECT_EQ(bf16_apply(op, kNegInf, kNan), kNan);
  }
}

// Every bfloat16 value against operands that hit each kind of value, then
// random pairs, over long arrays (the vectorised loop and its tail) and in
// place (dst aliasing a).
TEST(Reduce, BFloat16MatchesReferenceBitForBit) {
  const uint16_t partners[] = {0x0000, 0x8000,  0x0001, 0x807f, 0x0080, kOne,       0xbf81,
                               0x3b80, 0x3b81,  0x4049, 0xc2f7, 0x7b00, kMaxFinite, 0xff7f,
                               kInf,   kNegInf, kNan,   0x7f81, 0xffc0};
  std::vector<uint16_t> every(1 << 16);
  for (size_t i = 0; i < every.size(); ++i) every[i] = static_cast<uint16_t>(i);
  std::mt19937 rng(20240611);
  std::vector<uint16_t> shuffled(every);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    const ReduceKernel kernel = reduce_kernel(Dtype::BFloat16, op);
    std::vector<std::vector<uint16_t>> others;
    for (uint16_t p : partners) others.emplace_back(every.size(), p);
    others.push_back(shuffled);
    for (const auto& other : others) {
      std::vector<uint16_t> out(every.size()), in_place(every);
      kernel(out.data(), every.data(), other.data(), every.size());
      kernel(in_place.data(), in_place.data(), other.data(), every.size());
      size_t wrong = 0;
      for (size_t i = 0; i < every.size(); ++i) {
        const uint16_t want = bf16_reference(op, every[i], other[i]);
        if (out[i] != want || in_place[i] != want) {
          if (++wrong <= 5) {
            ADD_FAILURE() << reduce_op_name(op) << " 0x" << std::hex << every[i] << ", 0x"
                          << other[i] << ": got 0x" << out[i] << " (in place 0x" << in_place[i]
                          << "), want 0x" << want;
          }
        }
      }
      EXPECT_EQ(wrong, 0u) << reduce_op_name(op);
    }
  }
}

TEST(Reduce, ComplexSumAndNoOrder) {
  std::complex<double> a{1, 2}, b{3, -1};
  reduce_kernel(Dtype::Complex128, ReduceOp::Sum)(&a, &a, &b, 1);
  EXPECT_EQ(a, std::complex<double>(4, 1));
  EXPECT_THROW(reduce_kernel(Dtype::Complex64, ReduceOp::Max), DtypeError);
}

}  // namespace
}  // namespace chorus
