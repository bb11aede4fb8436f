// The TCP backends' (ring, mesh) record of a call, which their descriptor
// round carries from every rank to every rank, and its check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "chorus/backends/call_wire.h"
#include "chorus/backends/group_impl.h"
#include "chorus/backends/tcp/group_config.h"
#include "chorus/common/flight_recorder.h"

namespace chorus {

// A rank's record of a call in the TCP backends' descriptor round: its
// WireDesc, then n bytes of its input (small calls carry it inline).
std::vector<uint8_t> call_record(const CallDesc& desc, const void* data, size_t n);

// Checks every rank's record of one call (rank k's is records[k]). Throws
// UsageError "<context>: ranks disagree on the call: ..." when the
// descriptors differ. A record too short for a WireDesc, or not as long as
// agreeing ranks send (WireDesc + inline_bytes; for a broadcast only the
// root's carries bytes), is corruption: corrupt(k, what) must throw.
void check_call_records(const std::vector<std::vector<uint8_t>>& records, const CallDesc& desc,
                        size_t inline_bytes, const std::string& context,
                        const std::function<void(int, const std::string&)>& corrupt,
                        const std::vector<int>& shown_ranks = {},
                        const std::vector<std::vector<int>>& speaks_for = {});

// The end of a TCP backend's descriptor round, every rank's record in hand
// (ring: gathered around the ring; mesh: the record round): the records'
// check for a call whose input travels in them when it is at most
// small_bytes, a malformed record raised as a protocol error of its sender
// (LinkFailure, forwarded to the other ranks); then `recorder` learns that
// the call agreed. `ctx` and `op` prefix the errors, `config` names ranks.
// The input a record carries inline (after its WireDesc).
inline const uint8_t* record_payload(const std::vector<uint8_t>& record) {
  return record.data() + sizeof(WireDesc);
}

// A small all_gather's result straight from the records: rank k's
// `nbytes` of input land at dst + k * nbytes.
void gather_from_records(const std::vector<std::vector<uint8_t>>& records, size_t nbytes,
                         uint8_t* dst);

void agree_on_records(const std::vector<std::vector<uint8_t>>& records, const CallDesc& desc,
                      size_t small_bytes, const TcpGroupConfig& config, const ErrorContext& ctx,
                      const std::string& op, FlightRecorder& recorder);

}  // namespace chorus
