// Reduction kernels against scalar expectations, including aliasing.
#include "chorus/algorithms/reduce.h"

#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
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

TEST(Reduce, ComplexSumAndNoOrder) {
  std::complex<double> a{1, 2}, b{3, -1};
  reduce_kernel(Dtype::Complex128, ReduceOp::Sum)(&a, &a, &b, 1);
  EXPECT_EQ(a, std::complex<double>(4, 1));
  EXPECT_THROW(reduce_kernel(Dtype::Complex64, ReduceOp::Max), DtypeError);
}

}  // namespace
}  // namespace chorus
