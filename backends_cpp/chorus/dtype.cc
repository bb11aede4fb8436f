#include "chorus/dtype.h"

namespace chorus {

size_t dtype_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::Bool:
    case Dtype::Int8:
    case Dtype::UInt8: return 1;
    case Dtype::Int16:
    case Dtype::UInt16:
    case Dtype::Float16:
    case Dtype::BFloat16: return 2;
    case Dtype::Int32:
    case Dtype::UInt32:
    case Dtype::Float32: return 4;
    case Dtype::Int64:
    case Dtype::UInt64:
    case Dtype::Float64:
    case Dtype::Complex64: return 8;
    case Dtype::Complex128: return 16;
  }
  return 0;
}

const char* dtype_name(Dtype dtype) {
  switch (dtype) {
    case Dtype::Bool: return "bool";
    case Dtype::Int8: return "int8";
    case Dtype::Int16: return "int16";
    case Dtype::Int32: return "int32";
    case Dtype::Int64: return "int64";
    case Dtype::UInt8: return "uint8";
    case Dtype::UInt16: return "uint16";
    case Dtype::UInt32: return "uint32";
    case Dtype::UInt64: return "uint64";
    case Dtype::Float16: return "float16";
    case Dtype::Float32: return "float32";
    case Dtype::Float64: return "float64";
    case Dtype::Complex64: return "complex64";
    case Dtype::Complex128: return "complex128";
    case Dtype::BFloat16: return "bfloat16";
  }
  return "?";
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

}  // namespace chorus
