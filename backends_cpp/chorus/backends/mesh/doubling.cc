#include "chorus/backends/mesh/doubling.h"

#include <cstring>

namespace chorus::mesh {

std::vector<DoublingStep> doubling_steps(int rank, int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  if (rank >= p) return {{rank - p, rank - p}};
  std::vector<DoublingStep> steps;
  const bool has_extra = rank + p < n;
  if (has_extra) steps.push_back({-1, rank + p});
  for (int k = 1; k < p; k <<= 1) steps.push_back({rank ^ k, rank ^ k});
  if (has_extra) steps.push_back({rank + p, -1});
  return steps;
}

std::vector<int> doubling_bystanders(int rank, int n) {
  std::vector<bool> met(n, false);
  met[rank] = true;
  for (const DoublingStep& s : doubling_steps(rank, n)) {
    if (s.send_to >= 0) met[s.send_to] = true;
    if (s.wait_from >= 0) met[s.wait_from] = true;
  }
  std::vector<int> out;
  for (int q = 0; q < n; ++q) {
    if (!met[q]) out.push_back(q);
  }
  return out;
}

std::vector<uint8_t> pack_bundle(const std::vector<std::vector<uint8_t>>& records, int skip) {
  size_t total = 0;
  for (const auto& r : records) total += r.empty() ? 0 : 8 + r.size();
  std::vector<uint8_t> out;
  out.reserve(total);
  for (size_t q = 0; q < records.size(); ++q) {
    const auto& r = records[q];
    if (r.empty() || static_cast<int>(q) == skip) continue;
    const uint32_t head[2] = {static_cast<uint32_t>(q), static_cast<uint32_t>(r.size())};
    const auto* h = reinterpret_cast<const uint8_t*>(head);
    out.insert(out.end(), h, h + sizeof head);
    out.insert(out.end(), r.begin(), r.end());
  }
  return out;
}

std::string unpack_bundle(const std::vector<uint8_t>& bundle,
                          std::vector<std::vector<uint8_t>>& records) {
  size_t at = 0;
  while (at < bundle.size()) {
    uint32_t head[2];
    if (bundle.size() - at < sizeof head) return "a bundle of records cut short";
    std::memcpy(head, bundle.data() + at, sizeof head);
    at += sizeof head;
    const uint32_t q = head[0], bytes = head[1];
    if (q >= records.size()) return "a record of rank " + std::to_string(q) + ", out of range";
    if (!records[q].empty()) return "a second record of rank " + std::to_string(q);
    if (bytes == 0) return "an empty record of rank " + std::to_string(q);
    if (bundle.size() - at < bytes) return "a bundle of records cut short";
    records[q].assign(bundle.begin() + static_cast<std::ptrdiff_t>(at),
                      bundle.begin() + static_cast<std::ptrdiff_t>(at + bytes));
    at += bytes;
  }
  return "";
}

}  // namespace chorus::mesh
