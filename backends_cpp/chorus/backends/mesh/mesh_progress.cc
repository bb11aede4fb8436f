// The mesh's engine: one poll over every link, eager demultiplexing of what
// arrives, classification of dead links, and the abort protocol.
#include <cstring>

#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/mesh/wire.h"
#include "chorus/backends/tcp/call_failure.h"
#include "chorus/common/logging.h"

namespace chorus::mesh {

using tcp::Clock;

void MeshGroup::progress(int timeout_ms) {
  fds_.clear();
  std::vector<size_t>& starts = poll_starts_;
  starts.assign(config_.size, 0);
  for (int p = 0; p < config_.size; ++p) {
    starts[p] = fds_.size();
    if (p != config_.rank) peers_[p].link.add_pollfds(fds_);
  }
  // The acceptor's wake fd stays readable until take_accepted() drains it,
  // which a rank synced with that peer has no reason to do: watched after it
  // fired, it would end every poll at once (a spin until the call ends).
  const bool watch_acceptor = !accepted_ready_;
  if (watch_acceptor) fds_.push_back({acceptor_->wake_fd(), POLLIN, 0});
  const int rc = tcp::poll_spinning(fds_.data(), fds_.size(), timeout_ms, spin_, yield_);
  for (int p = 0; p < config_.size; ++p) {
    if (p != config_.rank) peers_[p].link.handle(fds_.data() + starts[p]);
  }
  if (watch_acceptor && fds_.back().revents != 0) accepted_ready_ = true;
  for (int p = 0; p < config_.size; ++p) {
    if (p == config_.rank) continue;
    while (auto frame = peers_[p].link.take()) route(p, std::move(*frame));
  }
  const auto now = Clock::now();
  if (poll_checks_.interrupt_due(rc == 0 && timeout_ms > 0, now)) check_interrupt();
  if (poll_checks_.reach_due(now)) check_reachable();
  check_links();
}

void MeshGroup::check_reachable() {
  for (int p = 0; p < config_.size; ++p) {
    if (p == config_.rank || !peers_[p].link.up()) continue;
    tcp::check_silence(ctx_, config_.peer_timeout_s, p, who(p), peers_[p].link.unacknowledged_ms(),
                       op_);
  }
}

// Files one frame from p: point-to-point ones in the Mailbox, collective ones
// in p's queue for the algorithm.
void MeshGroup::route(int p, tcp::Frame frame) {
  Peer& peer = peers_[p];
  auto protocol = [&](const std::string& what) {
    const std::string text = "protocol error from " + who(p) + " during " + op_ + ": " + what +
                             " (are all ranks calling matching operations?)";
    throw LinkFailure(p, Said{ctx_.prefix(), text}, false, Reason::Protocol);
  };
  if (mailbox_.expecting(p)) {
    if (frame.type != tcp::FrameType::Data || frame.aux0 != kP2PData) {
      protocol(std::string("a ") + tcp::frame_type_name(frame.type) +
               " frame in the middle of a message");
    }
    mailbox_.add(p, std::move(frame.payload));
    return;
  }
  switch (frame.type) {
    case tcp::FrameType::P2P: {
      P2PHeader h;
      if (frame.payload.size() != sizeof h) protocol("a bad message header");
      std::memcpy(&h, frame.payload.data(), sizeof h);
      mailbox_.start(p, static_cast<int>(frame.aux0), h.nbytes, h.dtype, h.frames);
      return;
    }
    case tcp::FrameType::Sync:
      // Its record for a call: the link is proven for that call (not by a
      // stale record of a call this rank has left).
      if (frame.aux0 >= calls_.index()) peer.tolerant = false;
      peer.coll.push_back(std::move(frame));
      return;
    case tcp::FrameType::Data:
      if (frame.aux0 != 0) protocol("message data without a message header");
      peer.coll.push_back(std::move(frame));
      return;
    case tcp::FrameType::Abort: break;  // never returned by take()
  }
  protocol("an unexpected frame");
}

void MeshGroup::check_links() {
  for (int p = 0; p < config_.size; ++p) {
    if (p == config_.rank) continue;
    Peer& peer = peers_[p];
    tcp::Link& l = peer.link;
    switch (l.state()) {
      case tcp::Link::State::Up:
      case tcp::Link::State::Down: break;
      case tcp::Link::State::Aborted: {
        const tcp::Frame& f = l.abort_frame();
        const AbortWord w = decode_abort(f.aux0);
        const int culprit = w.culprit;
        const bool fatal = w.fatal;
        const bool p2p = w.p2p;
        const uint64_t call = f.aux1;
        const std::string text(f.payload.begin(), f.payload.end());
        const bool collective = in_call_ && kind_ == Kind::Collective;
        if (!p2p && !fatal && collective && !peer.synced && call == calls_.index()) {
          // The call this rank is entering failed on a peer it has not met
          // in it yet (no record): see CallCounter::skip_aborted.
          reset(p);
          if (calls_.skip_aborted(w.abandoned ? std::optional<Reason>(w.reason) : std::nullopt)) {
            CHORUS_LOG(config_.verbose, ctx_.prefix(), "interrupted before call ", call,
                       ", which failed: this call is the next one");
            break;
          }
          if (w.abandoned) {
            throw LinkFailure(culprit, Said{ctx_.prefix() + op_ + " aborted: ", text}, false,
                              w.reason);
          }
          throw calls_.late(culprit, op_, ctx_.prefix(), text);
        }
        if (!p2p && !fatal && !collective && call > calls_.index()) {
          // A collective this rank has not entered yet failed: its entry decides.
          pending_abort_ = PendingAbort{culprit, call, text, fatal, w.reason, w.abandoned};
        }
        if (p2p || (entering_ && !fatal)) {
          // A send to us that was cut short, or a failure of a call this rank
          // was not in (it arrived between calls): reconnect and carry on.
          CHORUS_LOG(config_.verbose, ctx_.prefix(), "link to ", who(p), " aborted (", text,
                     "); reconnecting");
          reset(p);
          break;
        }
        if (!collective) {
          // In a send/recv: a collective's failure is not ours, unless our
          // peer is dead.
          if (fatal && (p == op_peer_ || culprit == op_peer_)) {
            throw LinkFailure(culprit, Said{ctx_.prefix() + op_ + " aborted: ", text}, true,
                              w.reason);
          }
          reset(p);
          break;
        }
        if (call < calls_.index() && fatal) {
          throw LinkFailure(culprit, Said{ctx_.prefix() + op_ + " aborted: ", text}, true,
                            w.reason);
        }
        if (call < calls_.index()) {
          // That rank failed in a call we had already finished: stale.
          CHORUS_LOG(config_.verbose, ctx_.prefix(), "ignoring a stale abort from ", who(p), ": ",
                     text);
          const bool tolerant = peer.tolerant;
          reset(p);
          if (!tolerant) {
            const std::string t =
                who(p) + " closed its link during " + op_ + " (after an earlier failure)";
            throw LinkFailure(p, Said{ctx_.prefix(), t});
          }
        } else if (call > calls_.index()) {
          // It failed in a call we have not reached yet (this rank skipped
          // calls it was interrupted before): raise if it is needed here.
          // It finished ours first, so what it sent for ours (its record, its
          // data) arrived before the abort and is still ours to take: it will
          // never send it again.
          pending_abort_ = PendingAbort{culprit, call, text, fatal, w.reason, w.abandoned};
          reset(p, /*keep_frames=*/true);
        } else {
          throw LinkFailure(culprit, Said{ctx_.prefix() + op_ + " aborted: ", text}, fatal,
                            w.reason);
        }
        break;
      }
      case tcp::Link::State::Closed:
      case tcp::Link::State::Failed: {
        mailbox_.drop_partial(p);
        if (peer.tolerant && peer.coll.empty()) {
          CHORUS_LOG(config_.verbose, ctx_.prefix(), "link to ", who(p), " is gone (",
                     l.failure_text(), "); reconnecting");
          reset(p);
          break;
        }
        // A peer that finished its part of a call may close (its program
        // ended): an error only if this rank still needs the link. Frames
        // that arrived before the close are still ours to take.
        if (l.sends_done() && (waiting_ != p || !peer.coll.empty())) break;
        const LostLink lost = lost_link(who(p), op_, l);
        throw LinkFailure(p, Said{ctx_.prefix(), lost.text}, true, lost.reason,
                          seen_by(lost.text, config_.rank));
      }
      case tcp::Link::State::Protocol: {
        const std::string text = "protocol error from " + who(p) + " during " + op_ + ": " +
                                 l.failure_text() + " (are all ranks calling the same operations?)";
        throw LinkFailure(p, Said{ctx_.prefix(), text}, false, Reason::Protocol);
      }
    }
  }
}

void MeshGroup::name_call(Failure& failure) const {
  name_failed_call(failure, config_, op_, kind_ == Kind::Collective ? calls_.index() : 0);
}

void MeshGroup::fail_links(int culprit, const std::string& text, bool fatal, Reason reason,
                           bool abandoned) {
  const uint64_t aux0 = encode_abort(AbortWord{culprit, fatal, false, reason, abandoned});
  for (int p = 0; p < config_.size; ++p) {
    if (p == config_.rank) continue;
    Peer& peer = peers_[p];
    if (abandoned && !peer.link.up() && !dialer_of(p)) {
      // p's dial may have come since abandon() looked: then p waits on that
      // connection, not for another one, and the abort goes there.
      auto bytes = tcp::frame_bytes(tcp::FrameType::Abort, aux0, calls_.index(), text);
      accepted_ready_ = true;
      const bool owed = acceptor_->owe_unless_dialed(p, bytes);
      if (!owed && install(p)) {
        peer.link.abort(aux0, calls_.index(), text, kAbortFlush);
      } else {
        if (!owed) acceptor_->owe(p, std::move(bytes));  // its other streams are still coming
        owes_ = true;
      }
    } else {
      peer.link.abort(aux0, calls_.index(), text, kAbortFlush);
    }
    reset(p);
    peer.tolerant = false;
  }
}

void MeshGroup::abort_link(int p, const std::string& text) {
  const uint64_t aux0 = encode_abort(AbortWord{config_.rank, false, true, Reason::Aborted});
  peers_[p].link.abort(aux0, calls_.index(), text, kAbortFlush);
  reset(p);
  peers_[p].tolerant = false;
}

void MeshGroup::run(const char* op, Kind kind, int peer, const std::function<void()>& body) {
  op_ = op;
  kind_ = kind;
  op_peer_ = peer;
  in_call_ = true;
  if (kind == Kind::Collective) {
    if (next_on_the_way_) {
      calls_.enter(*next_on_the_way_);
      next_on_the_way_.reset();
    } else {
      calls_.enter();
    }
  }
  struct Leave {
    MeshGroup* group;
    ~Leave() {
      group->in_call_ = false;
      group->op_peer_ = -1;
      group->waiting_ = -1;
    }
  } leave{this};
  try {
    try {
      body();
    } catch (const UsageError&) {
      // The descriptors differ, after the whole record round: every rank
      // raises this and the links stay clean. Our record may still be queued
      // (the peers' came first), and a peer needs it to reach the same
      // verdict: send it now, as a hierarchical call's next step may not
      // come back to this group (a failure here is handled below).
      if (kind == Kind::Collective) wait_sends();
      throw;
    }
    wait_sends();
  } catch (...) {
    // What a failure leaves dirty: every link in a collective; in a send, the
    // peer's link while our frames are still queued (they point into the
    // caller's buffer). A recv only reads the Mailbox: nothing to undo.
    rethrow_call_failure(
        config_, ctx_, op_,
        [&](int culprit, const std::string& text, bool fatal, Reason reason) {
          if (kind == Kind::Collective) {
            fail_links(culprit, text, fatal, reason);
          } else if (kind == Kind::Send && !peers_[peer].link.sends_done()) {
            abort_link(peer, text);
          }
        },
        [&](Failure& failure) { name_call(failure); });
  }
}

void MeshGroup::wait_sends() {
  while (true) {
    bool done = true;
    for (const auto& peer : peers_) done = done && peer.link.sends_done();
    if (done) return;
    progress();
  }
}

void MeshGroup::isend(int peer, const void* data, size_t n) {
  peers_[peer].link.post_send(tcp::FrameType::Data, 0, 0, data, n);
}

std::vector<uint8_t> MeshGroup::recv_exact(int p, size_t n) {
  Peer& peer = peers_[p];
  while (peer.coll.empty()) {
    const auto state = peer.link.state();
    if (state == tcp::Link::State::Closed || state == tcp::Link::State::Failed) {
      const LostLink lost = lost_link(who(p), op_, peer.link);
      throw LinkFailure(p, Said{ctx_.prefix(), lost.text}, true, lost.reason,
                        seen_by(lost.text, config_.rank));
    }
    if (state != tcp::Link::State::Up) {
      if (!pending_abort_) {
        const LostLink lost = lost_link(who(p), op_, peer.link);
        throw LinkFailure(p, Said{ctx_.prefix(), lost.text}, false, lost.reason);
      }
      const std::string text =
          "the link to " + who(p) + " closed during " + op_ + ": " + pending_abort_->text;
      throw LinkFailure(p, Said{ctx_.prefix(), text}, false, pending_abort_->reason);
    }
    waiting_ = p;
    progress();
    waiting_ = -1;
  }
  tcp::Frame f = std::move(peer.coll.front());
  peer.coll.pop_front();
  if (f.type != tcp::FrameType::Data || f.payload.size() != n) {
    const std::string text = "protocol error: " + who(p) + " sent a " +
                             tcp::frame_type_name(f.type) + " frame of " +
                             std::to_string(f.payload.size()) + " bytes during " + op_ +
                             ", expected " + std::to_string(n) + " bytes of data";
    throw LinkFailure(p, Said{ctx_.prefix(), text}, false, Reason::Protocol);
  }
  return std::move(f.payload);
}

}  // namespace chorus::mesh
