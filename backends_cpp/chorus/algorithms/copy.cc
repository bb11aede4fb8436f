#include "chorus/algorithms/copy.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace chorus {

namespace {

// Atomic: a group's collective may read it while another thread's init() sets it.
std::atomic<size_t> g_streaming_threshold{size_t{4} << 20};

}  // namespace

size_t streaming_threshold() { return g_streaming_threshold.load(std::memory_order_relaxed); }

void set_streaming_threshold(size_t bytes) {
  g_streaming_threshold.store(bytes, std::memory_order_relaxed);
}

void copy_streaming(void* dst, const void* src, size_t nbytes) {
#if defined(__x86_64__)
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  // Align the destination to 16 bytes with an ordinary copy of the head.
  const size_t head = std::min(nbytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  nbytes -= head;
  const size_t body = nbytes / 64 * 64;
  for (size_t i = 0; i < body; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  std::memcpy(d + body, s + body, nbytes - body);
  // Streaming stores are weakly ordered: make them visible before anything
  // that tells another thread or process the data is there.
  _mm_sfence();
#else
  std::memcpy(dst, src, nbytes);
#endif
}

void copy_result(void* dst, const void* src, size_t nbytes, size_t result_bytes) {
  if (result_bytes >= streaming_threshold()) {
    copy_streaming(dst, src, nbytes);
  } else {
    std::memcpy(dst, src, nbytes);
  }
}

}  // namespace chorus
