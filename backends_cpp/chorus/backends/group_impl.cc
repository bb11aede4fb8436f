#include "chorus/backends/group_impl.h"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <tuple>

#include "chorus/common/error.h"

namespace chorus {

const char* collective_name(Collective kind, ReduceOp op) {
  switch (kind) {
    case Collective::AllReduce:
      switch (op) {
        case ReduceOp::Sum: return "all_sum";
        case ReduceOp::Max: return "all_max";
        case ReduceOp::Min: return "all_min";
      }
      break;
    case Collective::AllGather: return "all_gather";
    case Collective::ReduceScatter: return "sum_scatter";
    case Collective::Broadcast: return "broadcast";
    case Collective::Barrier: return "barrier";
  }
  return "?";
}

bool CallDesc::operator==(const CallDesc& other) const {
  return std::tie(kind, op, dtype, count, shape_hash, root) ==
         std::tie(other.kind, other.op, other.dtype, other.count, other.shape_hash, other.root);
}

std::string CallDesc::shape_text() const {
  if (ndim == kUnknownDims) return "";
  std::ostringstream out;
  out << "(";
  for (int i = 0; i < std::min<int>(ndim, kShownDims); ++i) out << (i ? ", " : "") << dims[i];
  if (ndim == 1) out << ",";
  if (ndim > kShownDims) out << ", ...";
  out << ")";
  return out.str();
}

std::string CallDesc::describe() const {
  std::ostringstream out;
  out << collective_name(kind, op);
  if (kind != Collective::Barrier && ndim != kUnknownDims) {
    out << " of " << shape_text() << " " << dtype_name(dtype);
  } else if (kind != Collective::Barrier) {
    out << " of " << count << " x " << dtype_name(dtype);
  }
  if (kind == Collective::Broadcast) out << " from root " << root;
  return out.str();
}

std::string ErrorContext::prefix() const {
  std::ostringstream out;
  out << "[chorus " << backend << "] rank " << rank << "/" << size;
  if (!hostname.empty()) out << " (" << hostname << ")";
  out << ": ";
  return out.str();
}

namespace {

class SingleGroup final : public GroupImpl {
 public:
  explicit SingleGroup(std::string backend) : backend_(std::move(backend)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return backend_.c_str(); }
  GroupPtr split(int, int) override { return make_single_group(backend_); }
  void all_reduce(const CallDesc& d, const void* in, void* out) override {
    copy(in, out, d.nbytes());
  }
  void all_gather(const CallDesc& d, const void* in, void* out) override {
    copy(in, out, d.nbytes());
  }
  void reduce_scatter(const CallDesc& d, const void* in, void* out) override {
    copy(in, out, d.nbytes());
  }
  void broadcast(const CallDesc&, void*) override {}
  void barrier() override {}
  void send(const void*, size_t, Dtype, int dst, int) override {
    throw UsageError("send to rank " + std::to_string(dst) +
                     " in a group of size 1: there is no other rank");
  }
  void recv(void*, size_t, Dtype, int src, int) override {
    throw UsageError("recv from rank " + std::to_string(src) +
                     " in a group of size 1: there is no other rank");
  }

 private:
  static void copy(const void* in, void* out, size_t nbytes) {
    if (in != out && nbytes > 0) std::memmove(out, in, nbytes);
  }
  std::string backend_;
};

}  // namespace

GroupPtr make_single_group(const std::string& backend) {
  return std::make_shared<SingleGroup>(backend);
}

SplitPlan plan_split(GroupImpl& parent, int color, int key, uint64_t split_index) {
  struct Entry {
    int32_t color, key;
  };
  const int size = parent.size();
  Entry mine{color, key};
  std::vector<Entry> all(size);
  CallDesc desc;
  desc.kind = Collective::AllGather;
  desc.dtype = Dtype::Int32;
  desc.count = 2;
  desc.shape_hash = 0x5b117;  // fixed: every rank gathers the same shape
  parent.all_gather(desc, &mine, all.data());

  std::vector<std::tuple<int, int>> order;  // (key, parent rank) of my color
  for (int r = 0; r < size; ++r) {
    if (all[r].color == color) order.emplace_back(all[r].key, r);
  }
  std::sort(order.begin(), order.end());
  SplitPlan plan;
  plan.color = color;
  plan.split_index = split_index;
  for (const auto& [k, r] : order) {
    if (r == parent.rank()) plan.new_rank = static_cast<int>(plan.members.size());
    plan.members.push_back(r);
  }
  return plan;
}

std::string disagreement(const std::vector<CallDesc>& descs,
                         std::string (*describe)(const CallDesc&), const std::vector<int>& shown,
                         const std::vector<std::vector<int>>& speaks_for) {
  std::vector<size_t> firsts;
  std::ostringstream out;
  for (size_t k = 0; k < descs.size(); ++k) {
    bool seen = false;
    for (size_t f : firsts) seen = seen || descs[f] == descs[k];
    if (seen) continue;
    firsts.push_back(k);
    std::vector<int> ranks;
    for (size_t j = 0; j < descs.size(); ++j) {
      if (!(descs[j] == descs[k])) continue;
      if (!speaks_for.empty()) {
        ranks.insert(ranks.end(), speaks_for[j].begin(), speaks_for[j].end());
      } else {
        ranks.push_back(shown.empty() ? static_cast<int>(j) : shown[j]);
      }
    }
    std::sort(ranks.begin(), ranks.end());
    if (firsts.size() > 1) out << ", ";
    out << (ranks.size() == 1 ? "rank " : "ranks ");
    for (size_t i = 0; i < ranks.size(); ++i) out << (i ? "," : "") << ranks[i];
    out << (ranks.size() == 1 ? " has " : " have ")
        << (describe != nullptr ? describe(descs[k]) : descs[k].describe());
  }
  return out.str();
}

std::string never_joined_hint(size_t ranks) {
  return std::string(ranks == 1 ? ": it has" : ": they have") +
         " not called chorus.init() (a rank's first collective calls it), so this rank's"
         " init or first collective waited for " +
         (ranks == 1 ? "it" : "them") + " (CHORUS_TIMEOUT sets how long)";
}

}  // namespace chorus
