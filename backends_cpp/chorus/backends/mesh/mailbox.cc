#include "chorus/backends/mesh/mailbox.h"

#include <algorithm>
#include <cstring>

namespace chorus::mesh {

void Message::copy_to(void* out) const {
  auto* p = static_cast<uint8_t*>(out);
  for (const auto& part : parts) {
    if (!part.empty()) std::memcpy(p, part.data(), part.size());
    p += part.size();
  }
}

void Mailbox::start(int src, int tag, uint64_t nbytes, uint8_t dtype, uint64_t frames) {
  Partial& p = partial_[src];
  p.tag = tag;
  p.frames_left = frames;
  p.message = Message{nbytes, dtype, {}};
  // Bounded: the count comes from the wire.
  p.message.parts.reserve(static_cast<size_t>(std::min<uint64_t>(frames, 4096)));
  if (frames == 0) finish(src);
}

void Mailbox::add(int src, std::vector<uint8_t> bytes) {
  Partial& p = partial_[src];
  p.message.parts.push_back(std::move(bytes));
  if (--p.frames_left == 0) finish(src);
}

void Mailbox::finish(int src) {
  Partial& p = partial_[src];
  ready_[{src, p.tag}].push_back(std::move(p.message));
  p.message = Message{};
}

void Mailbox::drop_partial(int src) {
  partial_[src].frames_left = 0;
  partial_[src].message = Message{};
}

std::optional<Message> Mailbox::take(int src, int tag) {
  auto it = ready_.find({src, tag});
  if (it == ready_.end()) return std::nullopt;
  Message m = std::move(it->second.front());
  it->second.pop_front();
  if (it->second.empty()) ready_.erase(it);
  return m;
}

size_t Mailbox::waiting() const {
  size_t n = 0;
  for (const auto& [key, queue] : ready_) n += queue.size();
  return n;
}

}  // namespace chorus::mesh
