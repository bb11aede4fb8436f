// SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104), for the handshake's token
// proof. Written here to avoid a crypto dependency for 100 lines.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace chorus::tcp {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  Digest finish();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

Digest sha256(const void* data, size_t n);

// HMAC-SHA256 over the concatenation of up to three parts.
Digest hmac_sha256(const std::string& key, const void* a, size_t na, const void* b = nullptr,
                   size_t nb = 0, const void* c = nullptr, size_t nc = 0);

// Constant-time comparison of two digests.
bool digest_equal(const uint8_t* a, const uint8_t* b);

}  // namespace chorus::tcp
