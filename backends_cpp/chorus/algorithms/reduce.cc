#include "chorus/algorithms/reduce.h"

#include <complex>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "chorus/common/error.h"

namespace chorus {
namespace {

// numpy semantics: integers wrap (computed unsigned to avoid UB), bool sum is
// logical or, float max/min propagate NaN like np.maximum/np.minimum.
template <typename T>
struct Sum {
  static T apply(T x, T y) {
    if constexpr (std::is_same_v<T, bool>) {
      return x || y;
    } else if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(x) + static_cast<U>(y));
    } else {
      return x + y;
    }
  }
};

template <typename T>
struct Max {
  static T apply(T x, T y) {
    if constexpr (std::is_floating_point_v<T>) {
      if (x != x) return x;
      if (y != y) return y;
    }
    return x > y ? x : y;
  }
};

template <typename T>
struct Min {
  static T apply(T x, T y) {
    if constexpr (std::is_floating_point_v<T>) {
      if (x != x) return x;
      if (y != y) return y;
    }
    return x < y ? x : y;
  }
};

// float16 goes through float, rounding after every op as numpy does.
inline float half_to_float(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof h);
  return static_cast<float>(h);
}
inline uint16_t float_to_half(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

// bfloat16 (ml_dtypes') is the top half of a float32: widening is a shift,
// narrowing rounds to nearest even with integer ops, so the loop stays
// vectorisable without a compiler bf16 type. Same results, bit for bit, as
// ml_dtypes' float32 -> bfloat16 cast: overflow rounds to inf, subnormals
// round like normal numbers, and a NaN becomes the quiet NaN of its sign
// (0x7fc0 / 0xffc0), so a carry can never turn it into inf.
inline float bfloat16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}
inline uint16_t float_to_bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? quiet_nan : rounded);
}

// The 2-byte floats: widened to float for the op, rounded back after it.
// The conversions are template arguments, so they inline and the loop
// vectorises as a plain float loop would.
template <float (*widen)(uint16_t), uint16_t (*narrow)(float), template <typename> class Op>
void reduce_16bit_float(void* dst, const void* a, const void* b, size_t count) {
  auto* d = static_cast<uint16_t*>(dst);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < count; ++i) d[i] = narrow(Op<float>::apply(widen(x[i]), widen(y[i])));
}

template <typename T, template <typename> class Op>
void reduce_loop(void* dst, const void* a, const void* b, size_t count) {
  // Loads before stores in one expression: aliasing dst with a or b is safe.
  auto* d = static_cast<T*>(dst);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < count; ++i) d[i] = Op<T>::apply(x[i], y[i]);
}

template <template <typename> class Op>
ReduceKernel pick(Dtype dtype) {
  switch (dtype) {
    case Dtype::Bool: return reduce_loop<bool, Op>;
    case Dtype::Int8: return reduce_loop<int8_t, Op>;
    case Dtype::Int16: return reduce_loop<int16_t, Op>;
    case Dtype::Int32: return reduce_loop<int32_t, Op>;
    case Dtype::Int64: return reduce_loop<int64_t, Op>;
    case Dtype::UInt8: return reduce_loop<uint8_t, Op>;
    case Dtype::UInt16: return reduce_loop<uint16_t, Op>;
    case Dtype::UInt32: return reduce_loop<uint32_t, Op>;
    case Dtype::UInt64: return reduce_loop<uint64_t, Op>;
    case Dtype::Float16: return reduce_16bit_float<half_to_float, float_to_half, Op>;
    case Dtype::BFloat16: return reduce_16bit_float<bfloat16_to_float, float_to_bfloat16, Op>;
    case Dtype::Float32: return reduce_loop<float, Op>;
    case Dtype::Float64: return reduce_loop<double, Op>;
    default: return nullptr;
  }
}

}  // namespace

ReduceKernel reduce_kernel(Dtype dtype, ReduceOp op) {
  const bool complex = dtype == Dtype::Complex64 || dtype == Dtype::Complex128;
  if (complex) {
    if (op != ReduceOp::Sum) {
      throw DtypeError(std::string("all_") + reduce_op_name(op) + " is not defined for " +
                       dtype_name(dtype) + ": complex numbers have no order");
    }
    return dtype == Dtype::Complex64 ? reduce_loop<std::complex<float>, Sum>
                                     : reduce_loop<std::complex<double>, Sum>;
  }
  switch (op) {
    case ReduceOp::Sum: return pick<Sum>(dtype);
    case ReduceOp::Max: return pick<Max>(dtype);
    case ReduceOp::Min: return pick<Min>(dtype);
  }
  CHORUS_CHECK(false, "unknown reduce op");
}

}  // namespace chorus
