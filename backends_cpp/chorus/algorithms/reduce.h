// Reduction kernels: one typed loop per (op, dtype), chosen once per call.
//
// Algorithms stay byte-based and receive a type-erased ReduceKernel, as gloo's
// allreduce does: instantiating every algorithm per dtype would multiply
// build time and code size for no speed gain, since the loop is the hot part.
#pragma once

#include <cstddef>

#include "chorus/dtype.h"

namespace chorus {

// dst[i] = op(a[i], b[i]) for i < count elements. dst may alias a or b
// (in-place accumulation), but a partial overlap is not allowed.
using ReduceKernel = void (*)(void* dst, const void* a, const void* b, size_t count);

// Throws DtypeError for ops the dtype has no order for (max/min on complex).
ReduceKernel reduce_kernel(Dtype dtype, ReduceOp op);

}  // namespace chorus
