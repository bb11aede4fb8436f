#include "chorus/ops.h"

#include <cstring>
#include <string>
#include <type_traits>

#include "chorus/algorithms/reduce.h"
#include "chorus/common/call_guard.h"
#include "chorus/common/error.h"

namespace chorus::ops {
namespace {

std::string where(GroupImpl& group) {
  return "[chorus " + std::string(group.backend()) + "] rank " + std::to_string(group.rank()) +
         "/" + std::to_string(group.size()) + ": ";
}

void check_peer(GroupImpl& group, int peer, const char* what) {
  if (peer < 0 || peer >= group.size()) {
    throw UsageError(where(group) + what + " rank " + std::to_string(peer) +
                     " is outside the group (size " + std::to_string(group.size()) + ")");
  }
  if (peer == group.rank()) {
    throw UsageError(where(group) + what + " rank " + std::to_string(peer) +
                     ", which is this rank itself");
  }
}

void check_tag(GroupImpl& group, int tag) {
  if (tag < 0) {
    throw UsageError(where(group) + "tag must be >= 0, got " + std::to_string(tag));
  }
  if (tag != 0 && !group.supports_tags()) {
    throw UsageError(where(group) + "tag " + std::to_string(tag) +
                     ": tags need the mesh backend (this group runs on " + group.backend() +
                     ", which only has tag 0)");
  }
}

// Holds the group for one call (call_guard.h) and records it
// (flight_recorder.h): entered before the backend runs, completed or failed
// (and why) after.
class Call {
 public:
  Call(GroupImpl& group, const char* op, CallRecord record)
      : group_(group), scope_(group.call_guard(), op, [&group] { return where(group); }) {
    collective_ = record.collective;
    const uint64_t p2p = collective_ ? 0 : group.next_p2p_number();
    recording_ = group.recorder().capacity() != 0;
    if (!recording_) return;
    record.op = op;
    // A collective's number is the backend's next one (it counts at entry).
    record.seq = collective_ ? group.calls_entered() + 1 : p2p;
    group.recorder().begin(record);
  }

  template <typename Body>
  auto run(Body&& body) -> decltype(body()) {
    if (!recording_) return body();
    FlightRecorder& rec = group_.recorder();
    try {
      if constexpr (std::is_void_v<decltype(body())>) {
        body();
        rec.completed(final_seq());
      } else {
        auto result = body();
        rec.completed(final_seq());
        return result;
      }
    } catch (const PeerError& e) {
      rec.failed(final_seq(), CallEnd::Peer, e.failure().reason, e.failure().culprit);
      throw;
    } catch (const Interrupted&) {
      rec.failed(final_seq(), CallEnd::Interrupted);
      throw;
    } catch (const UsageError&) {
      rec.failed(final_seq(), CallEnd::Mismatch);
      throw;
    } catch (...) {
      rec.failed(final_seq(), CallEnd::Error);
      throw;
    }
  }

 private:
  // After the backend ran: the number it gave the call (0 keeps begin's).
  uint64_t final_seq() const { return collective_ ? group_.calls_entered() : 0; }

  GroupImpl& group_;
  CallGuard::Scope scope_;
  bool collective_ = true;
  bool recording_ = true;
};

CallRecord collective_record(const CallDesc& desc) {
  CallRecord r;
  r.dtype = desc.dtype;
  r.ndim = desc.ndim;
  r.dims = desc.dims;
  r.count = desc.count;
  r.nbytes = desc.nbytes();
  if (desc.kind == Collective::Broadcast) r.root = desc.root;
  return r;
}

CallRecord p2p_record(size_t nbytes, Dtype dtype, int peer, int tag) {
  CallRecord r;
  r.collective = false;
  r.dtype = dtype;
  r.nbytes = nbytes;
  r.count = nbytes / dtype_size(dtype);
  r.peer = peer;
  r.tag = tag;
  return r;
}

}  // namespace

void all_reduce(GroupImpl& group, const CallDesc& desc, const void* in, void* out) {
  reduce_kernel(desc.dtype, desc.op);  // complex max/min fails here, before any traffic
  if (group.size() == 1) {
    if (in != out) std::memmove(out, in, desc.nbytes());
    return;
  }
  Call call(group, collective_name(desc.kind, desc.op), collective_record(desc));
  call.run([&] { group.all_reduce(desc, in, out); });
}

void all_gather(GroupImpl& group, const CallDesc& desc, const void* in, void* out) {
  if (group.size() == 1) {
    std::memmove(out, in, desc.nbytes());
    return;
  }
  Call call(group, "all_gather", collective_record(desc));
  call.run([&] { group.all_gather(desc, in, out); });
}

void check_reduce_scatter(GroupImpl& group, const CallDesc& desc) {
  const auto size = static_cast<uint64_t>(group.size());
  if (desc.ndim == 0) {
    throw UsageError(where(group) + "sum_scatter needs an array with at least one axis");
  }
  const bool first_axis_known = desc.ndim != kUnknownDims;
  if (desc.count % size != 0 ||
      (first_axis_known && static_cast<uint64_t>(desc.dims[0]) % size != 0)) {
    const std::string axis = first_axis_known
                                 ? "the first axis (" + std::to_string(desc.dims[0]) + ")"
                                 : "the element count (" + std::to_string(desc.count) + ")";
    throw UsageError(where(group) + "sum_scatter: " + axis +
                     " is not divisible by the group size " + std::to_string(size));
  }
}

void reduce_scatter(GroupImpl& group, const CallDesc& desc, const void* in, void* out) {
  reduce_kernel(desc.dtype, desc.op);
  check_reduce_scatter(group, desc);
  if (group.size() == 1) {
    std::memmove(out, in, desc.nbytes());
    return;
  }
  Call call(group, collective_name(desc.kind, desc.op), collective_record(desc));
  call.run([&] { group.reduce_scatter(desc, in, out); });
}

void broadcast(GroupImpl& group, const CallDesc& desc, void* buf) {
  if (desc.root < 0 || desc.root >= group.size()) {
    throw UsageError(where(group) + "broadcast root " + std::to_string(desc.root) +
                     " is outside the group (size " + std::to_string(group.size()) + ")");
  }
  if (group.size() == 1) return;
  Call call(group, "broadcast", collective_record(desc));
  call.run([&] { group.broadcast(desc, buf); });
}

void barrier(GroupImpl& group) {
  if (group.size() == 1) return;
  CallDesc desc;
  desc.kind = Collective::Barrier;
  Call call(group, "barrier", collective_record(desc));
  call.run([&] { group.barrier(); });
}

void send(GroupImpl& group, const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) {
  if (group.size() == 1) {
    throw UsageError(where(group) + "send needs a group of at least 2 ranks (this one has 1)");
  }
  check_peer(group, dst, "send to");
  check_tag(group, tag);
  Call call(group, "send", p2p_record(nbytes, dtype, dst, tag));
  call.run([&] { group.send(buf, nbytes, dtype, dst, tag); });
}

void recv(GroupImpl& group, void* buf, size_t nbytes, Dtype dtype, int src, int tag) {
  if (group.size() == 1) {
    throw UsageError(where(group) + "recv needs a group of at least 2 ranks (this one has 1)");
  }
  check_peer(group, src, "recv from");
  check_tag(group, tag);
  Call call(group, "recv", p2p_record(nbytes, dtype, src, tag));
  call.run([&] { group.recv(buf, nbytes, dtype, src, tag); });
}

GroupPtr split(GroupImpl& group, int color, int key) {
  if (color < 0) {
    throw UsageError(where(group) + "split color must be >= 0, got " + std::to_string(color));
  }
  if (key < 0) key = group.rank();
  if (group.size() == 1) return group.split(color, key);
  Call call(group, "split", CallRecord{});
  return call.run([&] { return group.split(color, key); });
}

}  // namespace chorus::ops
