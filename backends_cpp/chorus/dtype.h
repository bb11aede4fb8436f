// Element types and reduction ops, known to every layer above transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace chorus {

// The numeric values travel on the wire and in flight records: append new
// dtypes at the end (and move kLastDtype), never reorder.
enum class Dtype : uint8_t {
  Bool,
  Int8,
  Int16,
  Int32,
  Int64,
  UInt8,
  UInt16,
  UInt32,
  UInt64,
  Float16,
  Float32,
  Float64,
  Complex64,
  Complex128,
  BFloat16,  // numpy's ml_dtypes.bfloat16: the top 16 bits of a float32
};

// The highest Dtype value: a byte from a peer above it names no dtype.
constexpr Dtype kLastDtype = Dtype::BFloat16;

enum class ReduceOp : uint8_t { Sum, Max, Min };

size_t dtype_size(Dtype dtype);
const char* dtype_name(Dtype dtype);
const char* reduce_op_name(ReduceOp op);

}  // namespace chorus
