// How the mesh uses the TCP link's frames (transport/tcp/link.h). README.md
// in this folder has the whole protocol.
//
//   Sync   aux0 = call index, aux1 = wire_op [| kBundleFlag];
//          payload = WireDesc [+ the input, small calls] (the record: first
//          frame of every collective, to every peer), or a bundle of
//          records (doubling.h: to one peer per step)
//   Data   aux0 = 0: collective data (one segment)
//          aux0 = kP2PData, aux1 = tag: one segment of a point-to-point message
//   P2P    aux0 = tag; payload = P2PHeader (starts a point-to-point message)
//   Abort  aux0 = encode_abort (../tcp/common.h), aux1 = call index;
//          payload = the reason, naming the culprit
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "chorus/backends/tcp/common.h"

namespace chorus::mesh {

constexpr uint64_t kP2PData = 1;
// In a Sync frame's aux1 (beside wire_op): the payload is a bundle of
// records (doubling.h), not one rank's record.
constexpr uint64_t kBundleFlag = uint64_t{1} << 32;

struct P2PHeader {
  uint64_t nbytes;
  uint8_t dtype;
  uint8_t pad[7];
  uint64_t frames;  // data frames that follow
};
static_assert(sizeof(P2PHeader) == 24, "sent as raw bytes");

// Default segment: large enough to amortise a frame header and a poll round,
// small enough that reduction overlaps the transfer.
constexpr size_t kDefaultSegment = size_t{1} << 20;
// At or below this many bytes a collective ships whole inputs in its record
// round (one round trip, N-1 copies sent); above, the direct algorithms.
constexpr size_t kSmallBytes = 16 * 1024;
constexpr auto kAbortFlush = std::chrono::milliseconds(1000);
constexpr auto kProbeEvery = std::chrono::milliseconds(500);

}  // namespace chorus::mesh
