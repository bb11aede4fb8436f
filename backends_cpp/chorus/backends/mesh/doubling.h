// The doubling record round's schedule and bundles (see README.md here):
// pure functions, no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chorus::mesh {

// One step of a rank's doubling round: send every record it holds to
// `send_to` (-1: nobody), then wait for `wait_from`'s (-1: nobody).
struct DoublingStep {
  int send_to = -1;
  int wait_from = -1;
};

// Recursive doubling over the largest power of two P <= n, so every rank
// holds every record after log2(P) exchanges with one peer each. A rank
// r >= P (n is not a power of two) hands its record to r - P first and gets
// all of them back from it at the end. Every pair meets at most once: a
// link carries at most one bundle each way per call.
std::vector<DoublingStep> doubling_steps(int rank, int n);

// The peers `rank` exchanges nothing with in its doubling round.
std::vector<int> doubling_bystanders(int rank, int n);

// Records held (non-empty) other than `skip`'s, as one payload: per record
// {u32 rank, u32 bytes} and its bytes.
std::vector<uint8_t> pack_bundle(const std::vector<std::vector<uint8_t>>& records, int skip);

// Adds a bundle's records to `records`. Returns "" or what is wrong with it
// (a rank out of range or already held, an empty record, a short payload);
// then `records` may hold part of it.
std::string unpack_bundle(const std::vector<uint8_t>& bundle,
                          std::vector<std::vector<uint8_t>>& records);

}  // namespace chorus::mesh
