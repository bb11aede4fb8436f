// HierGroup: the three phases of every call, the failures that cross them,
// and split.
#include "chorus/backends/hier/hier_group.h"

#include <algorithm>
#include <cstring>

#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"

namespace chorus::hier {
namespace {

// How a sub-group carries a culprit outside it (any rank of this group):
// its own ranks are >= 0, -1 is "unknown".
int foreign(int rank) { return rank < 0 ? -1 : -2 - rank; }

// "died or left during all_sum" and the like: what `reason` says of its culprit.
std::string what_it_did(Reason reason, const std::string& op) {
  switch (reason) {
    case Reason::Died: return "died or left during " + op;
    case Reason::Unreachable: return "is unreachable during " + op;
    case Reason::Interrupted: return "was interrupted during " + op;
    case Reason::Overlap: return "made overlapping calls from two threads during " + op;
    case Reason::Timeout: return "did not arrive for " + op;
    case Reason::Protocol: return "sent what " + op + " cannot carry";
    default: return "failed during " + op;
  }
}

}  // namespace

HierGroup::HierGroup(const InitOptions& options, std::shared_ptr<mesh::MeshGroup> world,
                     std::shared_ptr<shm::ShmGroup> local, std::vector<std::string> keys,
                     std::vector<std::string> names)
    : options_(options),
      ctx_{"hier", options.rank, options.size, options.hostname},
      world_(std::move(world)),
      local_(std::move(local)),
      keys_(std::move(keys)),
      names_(std::move(names)),
      layout_(layout_hosts(keys_)) {
  host_ = layout_.host_of[options_.rank];
  local_index_ = layout_.local_index[options_.rank];
  const int m = layout_.cross_groups;
  CHORUS_CHECK(local_ == nullptr || local_->size() == static_cast<int>(layout_.hosts[host_].size()),
               "the shm group holds this host's ranks");
  // Ranks beyond the fewest a host has join no cross group (color m).
  GroupPtr cross = world_->split(local_index_ < m ? local_index_ : m, host_);
  if (local_index_ < m && layout_.hosts.size() > 1) {
    cross_ = std::dynamic_pointer_cast<mesh::MeshGroup>(cross);
    CHORUS_CHECK(cross_ != nullptr && cross_->size() == static_cast<int>(layout_.hosts.size()),
                 "cross group j is a mesh over every host, ranked by host");
    std::vector<int> shown;
    for (const auto& h : layout_.hosts) shown.push_back(h[local_index_]);
    // The hosts compare calls after each host's ranks agreed on theirs: a
    // disagreement between hosts names every rank.
    cross_->show_ranks(std::move(shown), layout_.hosts);
  }
  if (local_ != nullptr) local_->show_ranks(layout_.hosts[host_]);
}

char* HierGroup::kept(std::vector<char>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

std::string HierGroup::who(int rank) const {
  if (rank < 0 || rank >= size()) return "a rank";
  return "rank " + std::to_string(rank) + " (" + names_[rank] + ")";
}

CallDesc HierGroup::phase_desc(const CallDesc& desc, Collective kind, Dtype dtype, uint64_t count) {
  CallDesc part = desc;
  part.kind = kind;
  part.dtype = dtype;
  part.count = count;
  // The whole call in the hash: hosts that disagree on it disagree here.
  uint64_t h = desc.shape_hash;
  for (uint64_t v : {desc.count, static_cast<uint64_t>(desc.kind), static_cast<uint64_t>(desc.op),
                     static_cast<uint64_t>(desc.dtype), static_cast<uint64_t>(desc.root)}) {
    h = (h ^ v) * 0x100000001b3ULL;
  }
  part.shape_hash = h;
  return part;
}

int HierGroup::cross_parts(size_t cross_bytes) const {
  return cross_bytes <= world_->inline_bytes() ? 1 : layout_.cross_groups;
}

std::vector<shm::ShmGroup::Block> HierGroup::blocks(size_t total, size_t unit, size_t copies,
                                                    int m) const {
  std::vector<shm::ShmGroup::Block> out;
  for (int j = 0; j < m; ++j) {
    const size_t lo = block_begin(total, j, m), hi = block_begin(total, j + 1, m);
    out.push_back({j, lo * unit * copies, (hi - lo) * unit * copies});
  }
  return out;
}

HierGroup::Caught HierGroup::caught(Phase phase) const {
  auto to_rank = [&](int culprit) {
    if (culprit <= -2) return -2 - culprit;
    if (culprit < 0) return -1;
    if (phase == Phase::Cross) {  // cross groups rank their members by host
      const auto& hosts = layout_.hosts;
      return culprit < static_cast<int>(hosts.size()) ? hosts[culprit][local_index_] : -1;
    }
    const auto& mine = layout_.hosts[host_];
    return culprit < static_cast<int>(mine.size()) ? mine[culprit] : -1;
  };
  Caught c;
  try {
    throw;
  } catch (const Interrupted& e) {
    c.failure = Failure{e.reason(), rank()};
    c.detail = e.what();
    c.cause = who(rank()) + " " + e.what_happened() + " during " + op_;
  } catch (const UsageError& e) {
    // Every rank of the sub-group raised it; the others hear it as Mismatch.
    c.failure = Failure{Reason::Mismatch, -1};
    c.detail = e.what();
    std::string ranks;
    for (int r : layout_.hosts[host_]) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
    c.cause = op_ + ": " +
              (phase == Phase::Cross
                   ? "the hosts disagree on the call: "
                   : "ranks " + ranks + " on host " + keys_[rank()] + " disagree on the call: ") +
              e.cause();
  } catch (const PeerError& e) {
    c.failure = e.failure();
    c.failure.culprit = to_rank(e.failure().culprit);
    c.detail = e.what();
    // The sub-group's words name ranks as this group does (show_ranks);
    // they lead with the culprit's address and what it did.
    const std::string& said = e.cause();
    const std::string lead = who(c.failure.culprit) + " " + what_it_did(c.failure.reason, op_);
    const bool plain = c.failure.reason == Reason::Late || c.failure.reason == Reason::Mismatch;
    c.cause = plain || said.rfind(lead, 0) == 0 ? said : lead + " (" + said + ")";
  } catch (const std::exception& e) {
    c.failure = Failure{Reason::Aborted, rank()};
    c.detail = e.what();
    c.cause = who(rank()) + " failed during " + op_ + ": " + e.what();
  }
  c.failure.op = op_;
  c.failure.call = calls_;
  c.failure.culprit_where = c.failure.culprit >= 0 ? names_[c.failure.culprit] : "";
  return c;
}

void HierGroup::rethrow(const Caught& c) const {
  const std::string call = op_ + " #" + std::to_string(calls_);
  const Said text{
      c.failure.reason == Reason::Late ? ctx_.prefix() : ctx_.prefix() + call + " failed: ",
      c.cause};
  try {
    throw;
  } catch (const Interrupted&) {
    throw;  // the bindings raise the handler's exception (KeyboardInterrupt)
  } catch (const DtypeError&) {
    throw DtypeError(Said{ctx_.prefix(), c.cause});
  } catch (const UsageError&) {
    throw UsageError(Said{ctx_.prefix(), c.cause});
  } catch (const PeerTimeout&) {
    throw PeerTimeout(text, c.failure);
  } catch (const PeerError&) {
    // Another host's ranks disagreed on the call: as they do, a usage error.
    if (c.failure.reason == Reason::Mismatch) throw UsageError(Said{ctx_.prefix(), c.cause});
    throw PeerError(text, c.failure);
  }
}

void HierGroup::run(const CallDesc& desc, int parts, const std::function<void()>& local,
                    const std::function<void()>& cross, char* buffer,
                    const std::vector<shm::ShmGroup::Block>& blocks) {
  op_ = collective_name(desc.kind, desc.op);
  ++calls_;
  // Decided once for both sub-calls (see hier_group.h), as the flat
  // backends do: an interrupt since the last call began. One during the
  // last call counts: the other hosts may have finished that call and failed
  // their next one in the same interrupt. Aborts for another reason than an
  // interrupt never skip (CallCounter::skip_aborted).
  const uint64_t interrupts = interrupt_count();
  const bool on_the_way = interrupts != interrupts_at_last_call_;
  interrupts_at_last_call_ = interrupts;
  Phase phase = Phase::Local;
  bool crossed = cross_ == nullptr || next_cross_abandoned_;
  next_cross_abandoned_ = false;
  auto away = [&] {
    phase = Phase::Cross;
    // A cross group beyond `parts` has no part in this call: it stays
    // uncrossed, so a failure abandons its call as one of a rank that never
    // got there (the other hosts may disagree on the size and wait in it).
    if (cross_ != nullptr && local_index_ < parts) {
      crossed = true;
      // On the way to this cross call: an interrupt since the cross group's
      // last call began, which may be several calls ago (small calls skip it).
      cross_->enter_next_as_phase(interrupts != interrupts_at_last_cross_);
      interrupts_at_last_cross_ = interrupts;
      try {
        cross();
      } catch (...) {
        // This host's other ranks wait for this rank's block.
        if (local_ != nullptr) {
          const Caught c = caught(Phase::Cross);
          local_->abort_call(c.cause, c.failure.reason, foreign(c.failure.culprit));
        }
        throw;
      }
    }
    phase = Phase::Gather;
  };
  try {
    if (local_ != nullptr) {
      local_->run_phased(desc, on_the_way, local, away, buffer, blocks);
    } else {
      local();
      away();
    }
  } catch (...) {
    const Caught c = caught(phase);
    // The other hosts wait for this rank in its cross group: in this call
    // if it never got there; when this host's shm group broke, also in the
    // next one, which cannot work (a program often exits on the error, and
    // the other hosts should still hear why rather than find it gone).
    const bool broken = local_ != nullptr && !local_->usable();
    if (cross_ != nullptr && (!crossed || broken)) {
      cross_->abandon(op_.c_str(), foreign(c.failure.culprit), c.failure.reason, c.cause);
      interrupts_at_last_cross_ = interrupt_count();
      next_cross_abandoned_ = crossed;
    }
    rethrow(c);
  }
  recorder().agreed();
}

void HierGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  const size_t es = dtype_size(desc.dtype);
  const size_t count = static_cast<size_t>(desc.count);
  const int m = cross_parts(count * es);
  char* dst = static_cast<char*>(out);
  // Each rank keeps from the local sum only the block it carries between
  // hosts; the other blocks come from their owners afterwards.
  const auto owned = blocks(count, es, 1, m);
  run(
      desc, m,
      [&] {
        if (local_ != nullptr) {
          local_->all_reduce_phase(desc, in, out, &owned);
        } else if (in != out && count != 0) {
          std::memcpy(out, in, count * es);
        }
      },
      [&] {
        const size_t lo = block_begin(count, local_index_, m);
        const size_t hi = block_begin(count, local_index_ + 1, m);
        const CallDesc part = phase_desc(desc, Collective::AllReduce, desc.dtype, hi - lo);
        cross_->all_reduce(part, dst + lo * es, dst + lo * es);
      },
      dst, owned);
}

void HierGroup::reduce_scatter(const CallDesc& desc, const void* in, void* out) {
  // Rank r's result is block r of the sum. Each host's ranks sum their whole
  // inputs in shared memory; then only blocks cross between hosts, each
  // once: cross group j owns the ranks at local indexes [lo_j, hi_j) of
  // every host and reduce-scatters, straight from this host's sum, the
  // blocks of host g's such ranks to host g. Each host sends (H - 1) / H of
  // the input, half of what an all_reduce of it would; a host with fewer
  // ranks simply has fewer blocks (nothing is padded).
  const size_t es = dtype_size(desc.dtype);
  const size_t per_rank = static_cast<size_t>(desc.count) / static_cast<size_t>(size());
  const size_t block = per_rank * es;
  const size_t widest = layout_.fullest;
  const int m = cross_parts(desc.nbytes());
  const size_t on_host = layout_.hosts[host_].size();
  char* sum = kept(sum_, local_ != nullptr ? desc.nbytes() : 0);
  const char* summed = local_ != nullptr ? sum : static_cast<const char*>(in);
  char* mine = kept(blocks_, on_host * block);  // this host's ranks' blocks, by local index
  // Cross group j's ranks, by local index, on a host of `ranks` ranks.
  auto owned = [&](int j, size_t ranks) {
    return std::pair{std::min(block_begin(widest, j, m), ranks),
                     std::min(block_begin(widest, j + 1, m), ranks)};
  };
  std::vector<shm::ShmGroup::Block> gathered;
  for (int j = 0; j < m; ++j) {
    const auto [lo, hi] = owned(j, on_host);
    gathered.push_back({j, lo * block, (hi - lo) * block});
  }
  // What this rank's cross call sends to host g (and receives for its own):
  // the sum's blocks of g's ranks it owns. Only those are kept from the
  // local sum.
  std::vector<algo::Pieces> sent;
  std::vector<shm::ShmGroup::Block> keep;
  uint64_t count = 0;
  for (const auto& members : layout_.hosts) {
    const auto [lo, hi] = owned(local_index_, members.size());
    algo::Pieces& pieces = sent.emplace_back();
    for (size_t i = lo; i < hi; ++i) {
      const size_t at = static_cast<size_t>(members[i]) * block;
      // Ranks numbered in a row on a host: one piece.
      if (!pieces.empty() && pieces.back().offset + pieces.back().length == at) {
        pieces.back().length += block;
      } else {
        pieces.push_back({at, block});
      }
    }
    for (const algo::Block& piece : pieces)
      keep.push_back({local_index_, piece.offset, piece.length});
    count += (hi - lo) * per_rank;
  }
  run(
      desc, m,
      [&] {
        if (local_ != nullptr) local_->all_reduce_phase(desc, in, sum, &keep);
      },
      [&] {
        const CallDesc part = phase_desc(desc, Collective::ReduceScatter, desc.dtype, count);
        const size_t lo = owned(local_index_, on_host).first;
        cross_->reduce_scatter_pieces(part, sent, summed, mine + lo * block);
      },
      mine, gathered);
  if (block != 0) std::memcpy(out, mine + static_cast<size_t>(local_index_) * block, block);
}

void HierGroup::all_gather(const CallDesc& desc, const void* in, void* out) {
  const size_t es = dtype_size(desc.dtype);
  const size_t per_rank = desc.nbytes();
  const size_t hosts = layout_.hosts.size();
  const size_t widest = layout_.fullest;  // every host's part is padded to it
  const size_t units = widest * static_cast<size_t>(desc.count);  // of one host's part
  const int m = cross_parts(units * es);
  // This host's ranks' inputs, then every host's part, slice j of all hosts
  // after slice j - 1 (what cross group j gathers).
  char* part = kept(sum_, widest * per_rank);
  char* all = kept(blocks_, hosts * widest * per_rank);
  run(
      desc, m,
      [&] {
        if (local_ != nullptr) {
          local_->all_gather_phase(desc, in, part);
        } else if (per_rank != 0) {
          std::memcpy(part, in, per_rank);
        }
      },
      [&] {
        const size_t lo = block_begin(units, local_index_, m);
        const size_t hi = block_begin(units, local_index_ + 1, m);
        const CallDesc slice = phase_desc(desc, Collective::AllGather, desc.dtype, hi - lo);
        cross_->all_gather(slice, part + lo * es, all + hosts * lo * es);
      },
      all, blocks(units, es, hosts, m));
  // Host g's slice j sits at hosts * lo_j + g * (hi_j - lo_j) units; its
  // byte x of the host's part is rank hosts[g][x / per_rank]'s byte x % per_rank.
  char* dst = static_cast<char*>(out);
  for (size_t g = 0; g < hosts; ++g) {
    const auto& members = layout_.hosts[g];
    const size_t filled = members.size() * per_rank;
    for (int j = 0; j < m; ++j) {
      const size_t lo = block_begin(units, j, m) * es, hi = block_begin(units, j + 1, m) * es;
      const char* src = all + hosts * lo + g * (hi - lo);
      for (size_t x = lo; x < std::min(hi, filled);) {
        const size_t r = x / per_rank, off = x % per_rank;
        const size_t n = std::min(per_rank - off, std::min(hi, filled) - x);
        std::memcpy(dst + static_cast<size_t>(members[r]) * per_rank + off, src + (x - lo), n);
        x += n;
      }
    }
  }
}

void HierGroup::broadcast(const CallDesc& desc, void* buf) {
  const size_t es = dtype_size(desc.dtype);
  const size_t count = static_cast<size_t>(desc.count);
  const int m = cross_parts(count * es);
  const int root_host = layout_.host_of[desc.root];
  char* data = static_cast<char*>(buf);
  run(
      desc, m,
      [&] {
        if (local_ == nullptr) return;
        if (host_ != root_host) {
          local_->agree_phase(desc, local_index_ < m);
          return;
        }
        CallDesc here = desc;
        here.root = layout_.local_index[desc.root];
        local_->broadcast_phase(here, buf);
      },
      [&] {
        const size_t lo = block_begin(count, local_index_, m);
        const size_t hi = block_begin(count, local_index_ + 1, m);
        CallDesc slice = phase_desc(desc, Collective::Broadcast, desc.dtype, hi - lo);
        slice.root = root_host;  // cross groups rank their members by host
        cross_->broadcast(slice, data + lo * es);
      },
      data, host_ == root_host ? std::vector<shm::ShmGroup::Block>{} : blocks(count, es, 1, m));
}

void HierGroup::barrier() {
  CallDesc desc;
  desc.kind = Collective::Barrier;
  // The last phase's barrier waits for this host's cross call (of cross
  // group 0 alone), which waited for every host's ranks: nobody leaves
  // before everyone arrived.
  run(
      desc, 1,
      [&] {
        if (local_ != nullptr) local_->agree_phase(desc, local_index_ == 0);
      },
      [&] { cross_->barrier(); }, nullptr, {});
}

void HierGroup::send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) {
  world_->send(buf, nbytes, dtype, dst, tag);
}

void HierGroup::recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) {
  world_->recv(buf, nbytes, dtype, src, tag);
}

GroupPtr HierGroup::split(int color, int key) {
  const SplitPlan plan = plan_split(*this, color, key, splits_++);
  // Every rank splits each sub-group, in this order, whatever it keeps.
  GroupPtr world = world_->split(color, key);
  GroupPtr local = local_ != nullptr ? local_->split(color, key) : nullptr;
  if (plan.members.size() == 1) return make_single_group("hier");
  InitOptions sub = options_;
  sub.rank = plan.new_rank;
  sub.size = static_cast<int>(plan.members.size());
  sub.hosts.clear();
  std::vector<std::string> keys, names;
  for (int r : plan.members) {
    if (!options_.hosts.empty()) sub.hosts.push_back(options_.hosts[r]);
    keys.push_back(keys_[r]);
    names.push_back(names_[r]);
  }
  const HostLayout child = layout_hosts(keys);
  if (child.hosts.size() == 1) return local;  // one host: its shm group
  if (!child.mixed()) return world;           // one rank per host: the mesh
  return std::make_shared<HierGroup>(sub, std::dynamic_pointer_cast<mesh::MeshGroup>(world),
                                     std::dynamic_pointer_cast<shm::ShmGroup>(local),
                                     std::move(keys), std::move(names));
}

}  // namespace chorus::hier
