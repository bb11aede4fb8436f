// Copies of collective results into the caller's array.
//
// A large result leaves the cache long before the caller reads it, and an
// ordinary store first reads the destination line it writes
// (read-for-ownership): three bytes of memory traffic per byte copied.
// Non-temporal (streaming) stores write around the cache: two. Small results
// are stored normally, since the caller is about to read them from cache.
#pragma once

#include <cstddef>

namespace chorus {

// Results at least this large (per rank, per call) are copied with streaming
// stores. Below it, a result and its inputs fit in a shared last-level cache.
// 4 MiB unless set_streaming_threshold() chose another.
size_t streaming_threshold();

// Process-wide, like the cache it is about: CHORUS_STREAM_BYTES, which
// chorus/env.py reads and chorus.init() passes here (0 streams always), for
// measurements.
void set_streaming_threshold(size_t bytes);

// memcpy semantics (no overlap); streaming stores where the CPU has them.
void copy_streaming(void* dst, const void* src, size_t nbytes);

// copy_streaming when `result_bytes` (the whole result of the call) reaches
// streaming_threshold(), memcpy otherwise.
void copy_result(void* dst, const void* src, size_t nbytes, size_t result_bytes);

}  // namespace chorus
