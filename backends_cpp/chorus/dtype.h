// Element types and reduction ops, known to every layer above transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace chorus {

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
};

enum class ReduceOp : uint8_t { Sum, Max, Min };

size_t dtype_size(Dtype dtype);
const char* dtype_name(Dtype dtype);
const char* reduce_op_name(ReduceOp op);

}  // namespace chorus
