#include "chorus/backends/tcp/call_record.h"

#include <cstring>

#include "chorus/backends/tcp/common.h"
#include "chorus/common/error.h"

namespace chorus {

std::vector<uint8_t> call_record(const CallDesc& desc, const void* data, size_t n) {
  const WireDesc wire = to_wire(desc);
  std::vector<uint8_t> record(sizeof wire + n);
  std::memcpy(record.data(), &wire, sizeof wire);
  if (n > 0) std::memcpy(record.data() + sizeof wire, data, n);
  return record;
}

void check_call_records(const std::vector<std::vector<uint8_t>>& records, const CallDesc& desc,
                        size_t inline_bytes, const std::string& context,
                        const std::function<void(int, const std::string&)>& corrupt,
                        const std::vector<int>& shown_ranks,
                        const std::vector<std::vector<int>>& speaks_for) {
  const auto fail = [&](size_t k, const std::string& what) {
    corrupt(static_cast<int>(k), what);
    throw PeerError(
        Said{context + ": ", "protocol error: " + what});  // corrupt() should have thrown
  };
  std::vector<CallDesc> descs(records.size());
  for (size_t k = 0; k < records.size(); ++k) {
    if (records[k].size() < sizeof(WireDesc)) fail(k, "short descriptor");
    WireDesc wire;
    std::memcpy(&wire, records[k].data(), sizeof wire);
    descs[k] = from_wire(wire);
  }
  for (const auto& d : descs) {
    // Every rank holds the same records, so every rank raises this same text.
    if (!(d == descs[0])) {
      throw UsageError(Said{context + ": ranks disagree on the call: ",
                            disagreement(descs, nullptr, shown_ranks, speaks_for)});
    }
  }
  for (size_t k = 0; k < records.size(); ++k) {
    const bool carries = desc.kind != Collective::Broadcast || static_cast<int>(k) == desc.root;
    if (records[k].size() != sizeof(WireDesc) + (carries ? inline_bytes : 0)) {
      fail(k, "record of " + std::to_string(records[k].size()) + " bytes");
    }
  }
}

void agree_on_records(const std::vector<std::vector<uint8_t>>& records, const CallDesc& desc,
                      size_t small_bytes, const TcpGroupConfig& config, const ErrorContext& ctx,
                      const std::string& op, FlightRecorder& recorder) {
  // Agreeing ranks make the same inline choice: any other size is corruption.
  check_call_records(
      records, desc, desc.nbytes() <= small_bytes ? desc.nbytes() : 0, ctx.prefix() + op,
      [&](int p, const std::string& what) {
        const std::string text =
            "protocol error: " + what + " from " + rank_and_address(config, p) + " in " + op;
        throw LinkFailure(p, Said{ctx.prefix(), text}, false, Reason::Protocol);
      },
      config.shown_ranks, config.speaks_for);
  recorder.agreed();
}

void gather_from_records(const std::vector<std::vector<uint8_t>>& records, size_t nbytes,
                         uint8_t* dst) {
  if (nbytes == 0) return;
  for (size_t k = 0; k < records.size(); ++k) {
    std::memcpy(dst + k * nbytes, record_payload(records[k]), nbytes);
  }
}

}  // namespace chorus
