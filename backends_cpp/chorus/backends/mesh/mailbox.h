// Point-to-point messages that arrived, per (source rank, tag), in arrival
// order: the eager half of send/recv. The mesh reads every link whenever a
// rank is inside any chorus call and files each message here, so a send
// never waits for the receiver to post a matching recv (two ranks that both
// send first, or a cycle of them, cannot deadlock), and a recv can take tag 0
// while a tag-1 message that came first waits.
//
// A message is one header frame (tag, size, dtype, frame count) followed by
// its data frames on the same link; a link delivers frames in order, so
// messages of one (source, tag) complete in the order they were sent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <utility>
#include <vector>

namespace chorus::mesh {

struct Message {
  uint64_t nbytes = 0;
  uint8_t dtype = 0;
  std::vector<std::vector<uint8_t>> parts;  // the data frames, in order

  // Copies the parts to out[nbytes].
  void copy_to(void* out) const;
};

class Mailbox {
 public:
  explicit Mailbox(int size) : partial_(static_cast<size_t>(size)) {}

  // A header from src announced `frames` data frames that follow it.
  void start(int src, int tag, uint64_t nbytes, uint8_t dtype, uint64_t frames);
  // src's next frames belong to the message it started (add() takes them).
  bool expecting(int src) const { return partial_[src].frames_left > 0; }
  // The tag of the message src is in the middle of.
  int partial_tag(int src) const { return partial_[src].tag; }
  void add(int src, std::vector<uint8_t> bytes);
  // src's link died in the middle of a message: it will never complete.
  void drop_partial(int src);

  // The oldest complete message from src with this tag, removed.
  std::optional<Message> take(int src, int tag);
  size_t waiting() const;  // complete messages not taken yet (tests, logs)

 private:
  struct Partial {
    int tag = 0;
    uint64_t frames_left = 0;
    Message message;
  };
  void finish(int src);

  std::vector<Partial> partial_;
  std::map<std::pair<int, int>, std::deque<Message>> ready_;
};

}  // namespace chorus::mesh
