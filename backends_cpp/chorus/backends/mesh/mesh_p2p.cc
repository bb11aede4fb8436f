// Tagged point to point between any two ranks: a header frame and the data
// in segments on the pair's link; the receiver files it in its Mailbox
// whenever it is inside any call (mailbox.h), so sends need no matching
// receive to complete.
#include <algorithm>

#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/mesh/wire.h"
#include "chorus/common/logging.h"

namespace chorus::mesh {

using tcp::Clock;

void MeshGroup::send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) {
  run("send", Kind::Send, dst, [&] {
    Peer& peer = peers_[dst];
    const uint64_t frames = (nbytes + segment_bytes_ - 1) / segment_bytes_;
    P2PHeader h{};
    h.nbytes = nbytes;
    h.dtype = static_cast<uint8_t>(dtype);
    h.frames = frames;
    const auto* p = static_cast<const uint8_t*>(buf);
    while (true) {
      // A send never needs the peer's frames, so a dead link may just mean
      // the peer is re-establishing it: reconnect and send the message again.
      peer.tolerant = true;
      ensure_link(dst);
      peer.sent_all = false;
      tcp::Link& l = peer.link;
      l.post_send(tcp::FrameType::P2P, static_cast<uint64_t>(tag), 0, &h, sizeof h);
      for (size_t at = 0; at < nbytes; at += segment_bytes_) {
        l.post_send(tcp::FrameType::Data, kP2PData, static_cast<uint64_t>(tag), p + at,
                    std::min(segment_bytes_, nbytes - at));
      }
      while (peer.link.up() && !peer.link.sends_done()) progress();
      // All of it left before the link went down: the peer has it, or it is
      // lost with the connection as with any sent bytes of a failed peer.
      if (peer.link.up() || peer.sent_all) break;
      CHORUS_LOG(config_.verbose, ctx_.prefix(), "link to ", who(dst),
                 " went down during send; sending the message again");
    }
    peer.tolerant = false;
  });
}

void MeshGroup::recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) {
  run("recv", Kind::Recv, src, [&] {
    Peer& peer = peers_[src];
    peer.tolerant = true;
    std::optional<Message> msg;
    auto next_probe = Clock::now() + kProbeEvery;
    while (!(msg = mailbox_.take(src, tag))) {
      // Messages already filed survive a dead link; for more we need it up.
      if (!dialer_of(src)) install(src);
      if (!peer.link.up()) {
        peer.need = true;
        if (!recover(src) && Clock::now() >= next_probe) {
          probe(src);
          next_probe = Clock::now() + kProbeEvery;
        }
      }
      waiting_ = src;
      progress();
      waiting_ = -1;
    }
    peer.tolerant = false;
    if (msg->nbytes != nbytes || msg->dtype != static_cast<uint8_t>(dtype)) {
      std::string sent_type = "?";
      if (msg->dtype <= static_cast<uint8_t>(kLastDtype)) {
        sent_type = dtype_name(static_cast<Dtype>(msg->dtype));
      }
      throw UsageError(
          Said{ctx_.prefix(), "recv from " + who(src) + " (tag " + std::to_string(tag) +
                                  "): it sent " + std::to_string(msg->nbytes) + " bytes of " +
                                  sent_type + ", this rank expected " + std::to_string(nbytes) +
                                  " bytes of " + dtype_name(dtype) + " (the message is dropped)"});
    }
    msg->copy_to(buf);
  });
}

}  // namespace chorus::mesh
