#include "chorus/backends/mpi/mpi_group.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <sstream>

#include "chorus/backends/call_wire.h"
#include "chorus/backends/mpi/mpi_runtime.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::mpi {
namespace {

// Messages up to this size travel in one MPI message with their header.
constexpr size_t kInlineBytes = 64 * 1024;

// First message of every send(): what follows and what it is.
struct MessageHeader {
  uint64_t nbytes;
  uint8_t dtype;
  uint8_t inline_data;  // 1: the payload follows in this same message
  uint8_t pad[6];
};
static_assert(sizeof(MessageHeader) == 16, "MessageHeader is sent as raw bytes");

// What split() agrees on before MPI_Comm_split: the same descriptor as the
// all_gather of plan_split() in the other backends.
CallDesc split_desc() {
  CallDesc desc;
  desc.kind = Collective::AllGather;
  desc.dtype = Dtype::Int32;
  desc.count = 2;
  desc.shape_hash = 0x5b117;
  return desc;
}

std::string describe(const CallDesc& desc) {
  return desc == split_desc() ? "split" : desc.describe();
}

std::string dtype_text(uint8_t code) {
  return code <= static_cast<uint8_t>(kLastDtype) ? dtype_name(static_cast<Dtype>(code)) : "?";
}

}  // namespace

MpiGroup::MpiGroup(Runtime& runtime, Comm comm, GroupConfig config)
    : runtime_(runtime), api_(runtime.api()), comm_(comm), config_(std::move(config)) {
  const Constants& k = api_.constants();
  config_.chunk_bytes =
      std::min<size_t>(config_.chunk_bytes ? config_.chunk_bytes : kDefaultChunkBytes, INT_MAX);
  {
    auto lock = runtime_.call_lock();
    // Errors come back as codes (turned into exceptions below) instead of
    // MPI's default, which aborts the whole job.
    int rc = api_.comm_set_errhandler(comm_, k.errors_return);
    if (rc == 0) rc = api_.comm_rank(comm_, &rank_);
    if (rc == 0) rc = api_.comm_size(comm_, &size_);
    if (rc != 0) {
      const std::string text = api_.error_string(rc);
      api_.comm_free(&comm_);
      throw PeerError("[chorus mpi] setting up a communicator failed: " + text);
    }
    // MPI_TAG_UB is only guaranteed on MPI_COMM_WORLD.
    int flag = 0;
    int tag_ub = 0;
    if (api_.comm_get_int_attr(k.comm_world, k.tag_ub_keyval, &tag_ub, &flag) == 0 && flag) {
      tag_ub_ = tag_ub;
    }
  }
  ctx_.backend = "mpi";
  ctx_.rank = rank_;
  ctx_.size = size_;
  ctx_.hostname = config_.hostname;
  runtime_.attach(this);  // last: nothing below may throw
}

MpiGroup::~MpiGroup() { runtime_.detach(this); }

void MpiGroup::release(std::vector<std::vector<uint8_t>>& orphans) {
  if (released_) return;
  released_ = true;
  for (PendingSend& send : pending_) {
    int done = 0;
    if (api_.test(&send.request, &done) == 0 && done) continue;
    // Freeing an active request lets the send complete in the background.
    api_.request_free(&send.request);
    orphans.push_back(std::move(send.bytes));
  }
  pending_.clear();
  // Local in Open MPI: no other rank needs to take part.
  api_.comm_free(&comm_);
}

template <typename Body>
void MpiGroup::run(const char* op, Body&& body) {
  op_ = op;
  auto lock = runtime_.call_lock();
  if (released_) {
    throw UsageError(Said{
        ctx_.prefix(), op_ +
                           ": MPI has been shut down (chorus finalises it at interpreter exit), so "
                           "this group can no longer communicate"});
  }
  reap_sends();
  body();
}

void MpiGroup::check(int rc, const char* call) const {
  if (rc == 0) return;
  throw PeerError(
      Said{ctx_.prefix(), std::string(call) + " in " + op_ + " failed: " + api_.error_string(rc)});
}

size_t MpiGroup::chunk_elems(size_t elem_size) const {
  return std::max<size_t>(1, config_.chunk_bytes / elem_size);
}

void MpiGroup::agree(const CallDesc& desc) {
  ++calls_;
  const Datatype byte = api_.constants().byte;
  const WireDesc mine = to_wire(desc);
  std::vector<WireDesc> all(static_cast<size_t>(size_));
  constexpr int kBytes = sizeof(WireDesc);
  check(api_.allgather(&mine, kBytes, byte, all.data(), kBytes, byte, comm_),
        "MPI_Allgather of the call descriptors");
  std::vector<CallDesc> descs(all.size());
  bool same = true;
  for (size_t r = 0; r < all.size(); ++r) {
    descs[r] = from_wire(all[r]);
    same = same && descs[r] == descs[0];
  }
  if (!same) {
    throw UsageError(Said{ctx_.prefix() + op_ + ": ranks disagree on the call: ",
                          disagreement(descs, describe)});
  }
  recorder().agreed();
}

// ---------------------------------------------------------------- collectives

void MpiGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  run(collective_name(desc.kind, desc.op), [&] {
    agree(desc);
    const Reduction reduce = runtime_.reduction(desc.dtype, desc.op);
    const size_t elem = dtype_size(desc.dtype);
    const size_t step = chunk_elems(elem);
    const bool in_place = in == out;
    const auto* src = static_cast<const uint8_t*>(in);
    auto* dst = static_cast<uint8_t*>(out);
    for (size_t at = 0; at < desc.count; at += step) {
      const size_t n = std::min<size_t>(step, desc.count - at);
      const void* from = in_place ? api_.constants().in_place : src + at * elem;
      check(
          api_.allreduce(from, dst + at * elem, static_cast<int>(n), reduce.type, reduce.op, comm_),
          "MPI_Allreduce");
    }
  });
}

void MpiGroup::all_gather(const CallDesc& desc, const void* in, void* out) {
  run(collective_name(desc.kind, desc.op), [&] {
    agree(desc);
    const Datatype byte = api_.constants().byte;
    const size_t nbytes = desc.nbytes();
    const auto* src = static_cast<const uint8_t*>(in);
    auto* dst = static_cast<uint8_t*>(out);
    if (nbytes == 0) return;
    if (nbytes <= config_.chunk_bytes) {
      const int n = static_cast<int>(nbytes);
      check(api_.allgather(src, n, byte, dst, n, byte, comm_), "MPI_Allgather");
      return;
    }
    // Each call gathers one slice of every rank's block into a staging
    // buffer (bounded by the chunk size), copied out to the blocks.
    const size_t size = static_cast<size_t>(size_);
    const size_t step = std::max<size_t>(1, config_.chunk_bytes / size);
    std::vector<uint8_t> staging(size * step);
    for (size_t at = 0; at < nbytes; at += step) {
      const size_t n = std::min(step, nbytes - at);
      const int count = static_cast<int>(n);
      check(api_.allgather(src + at, count, byte, staging.data(), count, byte, comm_),
            "MPI_Allgather");
      for (size_t r = 0; r < size; ++r) std::memcpy(dst + r * nbytes + at, &staging[r * n], n);
    }
  });
}

void MpiGroup::reduce_scatter(const CallDesc& desc, const void* in, void* out) {
  run(collective_name(desc.kind, desc.op), [&] {
    agree(desc);
    const Reduction reduce = runtime_.reduction(desc.dtype, desc.op);
    const size_t size = static_cast<size_t>(size_);
    const size_t elem = dtype_size(desc.dtype);
    const size_t block = desc.count / size;  // elements per rank
    const auto* src = static_cast<const uint8_t*>(in);
    auto* dst = static_cast<uint8_t*>(out);
    if (block == 0) return;
    if (block * size <= chunk_elems(elem)) {
      check(api_.reduce_scatter_block(src, dst, static_cast<int>(block), reduce.type, reduce.op,
                                      comm_),
            "MPI_Reduce_scatter_block");
      return;
    }
    // Slice [at, at + n) of every rank's block, packed so that MPI's block r
    // is ours: the result is slice [at, at + n) of this rank's block.
    const size_t step = std::max<size_t>(1, chunk_elems(elem) / size);
    std::vector<uint8_t> staging(size * step * elem);
    for (size_t at = 0; at < block; at += step) {
      const size_t n = std::min(step, block - at);
      for (size_t r = 0; r < size; ++r) {
        std::memcpy(&staging[r * n * elem], src + (r * block + at) * elem, n * elem);
      }
      check(api_.reduce_scatter_block(staging.data(), dst + at * elem, static_cast<int>(n),
                                      reduce.type, reduce.op, comm_),
            "MPI_Reduce_scatter_block");
    }
  });
}

void MpiGroup::broadcast(const CallDesc& desc, void* buf) {
  run(collective_name(desc.kind, desc.op), [&] {
    agree(desc);
    const size_t nbytes = desc.nbytes();
    auto* data = static_cast<uint8_t*>(buf);
    for (size_t at = 0; at < nbytes; at += config_.chunk_bytes) {
      const size_t n = std::min(config_.chunk_bytes, nbytes - at);
      check(api_.bcast(data + at, static_cast<int>(n), api_.constants().byte, desc.root, comm_),
            "MPI_Bcast");
    }
  });
}

void MpiGroup::barrier() {
  CallDesc desc;
  desc.kind = Collective::Barrier;
  // Every rank's descriptor must arrive before any rank's allgather
  // completes: the descriptor round is a barrier.
  run("barrier", [&] { agree(desc); });
}

// ---------------------------------------------------------------- point to point

void MpiGroup::reap_sends() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    int done = 0;
    check(api_.test(&it->request, &done), "MPI_Test of an earlier send");
    it = done ? pending_.erase(it) : std::next(it);
  }
}

void MpiGroup::post_send(std::vector<uint8_t> bytes, int dst, int tag) {
  pending_.push_back(PendingSend{Request{}, std::move(bytes)});
  PendingSend& send = pending_.back();
  const int rc = api_.isend(send.bytes.data(), static_cast<int>(send.bytes.size()),
                            api_.constants().byte, dst, tag, comm_, &send.request);
  if (rc != 0) pending_.pop_back();
  check(rc, "MPI_Isend");
}

void MpiGroup::send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) {
  run("send", [&] {
    if (tag > tag_ub_) {
      throw UsageError(Said{ctx_.prefix(), "send: tag " + std::to_string(tag) +
                                               " is above this MPI's largest tag (MPI_TAG_UB = " +
                                               std::to_string(tag_ub_) + ")"});
    }
    MessageHeader header{};
    header.nbytes = nbytes;
    header.dtype = static_cast<uint8_t>(dtype);
    header.inline_data = nbytes <= kInlineBytes ? 1 : 0;
    const auto* data = static_cast<const uint8_t*>(buf);
    const auto* head = reinterpret_cast<const uint8_t*>(&header);
    std::vector<uint8_t> first(head, head + sizeof header);
    if (header.inline_data) {
      first.insert(first.end(), data, data + nbytes);
      post_send(std::move(first), dst, tag);
      return;
    }
    // Messages between two ranks with one tag are not overtaken (MPI's
    // ordering rule), so the chunks arrive after their header, in order.
    post_send(std::move(first), dst, tag);
    for (size_t at = 0; at < nbytes; at += config_.chunk_bytes) {
      const size_t n = std::min(config_.chunk_bytes, nbytes - at);
      post_send(std::vector<uint8_t>(data + at, data + at + n), dst, tag);
    }
  });
}

void MpiGroup::recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) {
  run("recv", [&] {
    if (tag > tag_ub_) {
      throw UsageError(Said{ctx_.prefix(), "recv: tag " + std::to_string(tag) +
                                               " is above this MPI's largest tag (MPI_TAG_UB = " +
                                               std::to_string(tag_ub_) + ")"});
    }
    const Datatype byte = api_.constants().byte;
    const std::string from = "rank " + std::to_string(src);
    auto protocol_error = [&](const std::string& what) {
      return PeerError(Said{ctx_.prefix(), "recv from " + from + " (tag " + std::to_string(tag) +
                                               "): protocol error: " + what +
                                               " (is it calling send() with the same tag?)"});
    };
    // The size of the next message from src with this tag.
    auto next_size = [&]() {
      Status status{};
      check(api_.probe(src, tag, comm_, &status), "MPI_Probe");
      int count = 0;
      check(api_.get_count(status, byte, &count), "MPI_Get_count");
      return static_cast<size_t>(std::max(count, 0));
    };

    const size_t first_size = next_size();
    if (first_size < sizeof(MessageHeader) || first_size > sizeof(MessageHeader) + kInlineBytes) {
      throw protocol_error("a first message of " + std::to_string(first_size) + " bytes");
    }
    std::vector<uint8_t> first(first_size);
    check(api_.recv(first.data(), static_cast<int>(first_size), byte, src, tag, comm_), "MPI_Recv");
    MessageHeader header;
    std::memcpy(&header, first.data(), sizeof header);
    const bool match = header.nbytes == nbytes && header.dtype == static_cast<uint8_t>(dtype);
    auto* data = static_cast<uint8_t*>(buf);
    if (header.inline_data) {
      if (first_size != sizeof header + header.nbytes) {
        throw protocol_error("a header for " + std::to_string(header.nbytes) + " bytes in " +
                             std::to_string(first_size));
      }
      if (match && nbytes > 0) std::memcpy(data, first.data() + sizeof header, nbytes);
    } else {
      // Probed chunk by chunk: the sender's chunk size need not be ours. A
      // mismatched message is drained into scratch so the next one is clean.
      std::vector<uint8_t> scratch;
      for (size_t at = 0; at < header.nbytes;) {
        const size_t n = next_size();
        if (n == 0 || at + n > header.nbytes) {
          throw protocol_error("a chunk of " + std::to_string(n) + " bytes at offset " +
                               std::to_string(at) + " of " + std::to_string(header.nbytes));
        }
        if (!match) scratch.resize(n);
        check(api_.recv(match ? data + at : scratch.data(), static_cast<int>(n), byte, src, tag,
                        comm_),
              "MPI_Recv");
        at += n;
      }
    }
    if (!match) {
      throw UsageError(Said{ctx_.prefix(),
                            "recv from " + from + ": it sent " + std::to_string(header.nbytes) +
                                " bytes of " + dtype_text(header.dtype) + ", this rank expected " +
                                std::to_string(nbytes) + " bytes of " + dtype_name(dtype)});
    }
  });
}

// ---------------------------------------------------------------- split

GroupPtr MpiGroup::split(int color, int key) {
  Comm child{};
  uint64_t index = 0;
  run("split", [&] {
    agree(split_desc());
    check(api_.comm_split(comm_, color, key, &child), "MPI_Comm_split");
    index = split_count_++;
  });
  GroupConfig config = config_;
  config.path = config_.path + "/" + std::to_string(index) + "." + std::to_string(color);
  auto group = std::make_shared<MpiGroup>(runtime_, child, std::move(config));
  // A group of one needs no communicator; ours is freed with `group`.
  if (group->size() == 1) return make_single_group("mpi");
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "split color ", color, ": rank ", group->rank(), "/",
             group->size(), " of group ", config_.path, "/", index, ".", color);
  return group;
}

}  // namespace chorus::mpi
