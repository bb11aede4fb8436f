// Set-up and reconnection: the lower rank of every pair dials the higher one,
// which installs the connection from its Acceptor's queue. Epochs (counted by
// the dialer) tell a re-established link from a stale attempt.
#include <sys/socket.h>

#include <cerrno>

#include "chorus/backends/call_wire.h"
#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/mesh/wire.h"
#include "chorus/backends/tcp/link_setup.h"
#include "chorus/common/logging.h"

namespace chorus::mesh {
namespace {

using tcp::Clock;

// A set-up dial attempt gives up after this long, so one unreachable rank
// does not stop us from reaching the others; the next round retries it.
constexpr auto kDialAttempt = std::chrono::seconds(1);

bool transient(int err) {
  return err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH || err == ETIMEDOUT ||
         err == ECONNRESET || err == ECONNABORTED;
}

}  // namespace

MeshGroup::MeshGroup(GroupConfig config, std::vector<tcp::Listener> listeners)
    : config_(std::move(config)), mailbox_(config_.size) {
  ctx_.backend = "mesh";
  ctx_.rank = config_.rank;
  ctx_.size = config_.size;
  ctx_.hostname = config_.hostname;
  id_.token = config_.token;
  id_.group = tcp::group_hash(config_.job_id, "mesh" + config_.group_path);
  segment_bytes_ = config_.segment_bytes ? config_.segment_bytes : kDefaultSegment;
  small_bytes_ = std::min(kSmallBytes, segment_bytes_);
  // Data frames carry one segment, of a collective or of a message; Sync frames
  // carry the call record (a WireDesc plus a small input), or a bundle of
  // records (every rank's, at most).
  frame_limits_.sync = static_cast<size_t>(config_.size) * (8 + sizeof(WireDesc) + small_bytes_);
  frame_limits_.p2p = sizeof(P2PHeader);
  frame_limits_.early_data = std::max<size_t>(segment_bytes_, 1);
  peers_.resize(config_.size);
  doubling_steps_ = doubling_steps(config_.rank, config_.size);
  doubling_bystanders_ = doubling_bystanders(config_.rank, config_.size);
  tcp::AcceptorConfig ac = acceptor_config(config_, id_, "mesh");
  ac.expected_rank = 0;  // every lower rank dials us
  ac.expected_ranks = config_.rank;
  acceptor_ = std::make_unique<tcp::Acceptor>(std::move(listeners), ac);
  spin_ = tcp_spin(config_);
  yield_ = tcp_yield(config_);
  connect_initial();
}

MeshGroup::~MeshGroup() = default;

std::string MeshGroup::who(int rank) const { return rank_and_address(config_, rank); }

void MeshGroup::connect_initial() {
  const auto deadline = deadline_after(config_.timeout_s);
  const std::string limit = tcp::seconds_text(config_.timeout_s);
  std::vector<int> to_dial;
  for (int p = config_.rank + 1; p < config_.size; ++p) to_dial.push_back(p);
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "listening on ", acceptor_->addresses().front(),
             "; dialing ", to_dial.size(), " higher rank(s), waiting for ", config_.rank,
             " lower one(s)");
  while (true) {
    for (auto it = to_dial.begin(); it != to_dial.end();) {
      const int p = *it;
      try {
        dial(p, deadline, true);
        it = to_dial.erase(it);
        continue;
      } catch (const PeerTimeout&) {
        // Not answering yet: try the others, then this one again.
      } catch (const tcp::SocketError& e) {
        if (!transient(e.err())) {
          throw PeerError(Said{ctx_.prefix(), "connecting to " + who(p) + " failed: " + e.what()});
        }
      } catch (const PeerError& e) {
        throw PeerError(Said{ctx_.prefix(), "connecting to " + who(p) + " failed: " + e.what()});
      }
      ++it;
    }
    bool lower_done = true;
    accepted_ready_ = true;
    for (int p = 0; p < config_.rank; ++p) {
      if (!peers_[p].link.up() && !install(p)) lower_done = false;
    }
    if (to_dial.empty() && lower_done) break;
    if (Clock::now() >= deadline) {
      std::string text;
      size_t missing = 0;
      for (int p : to_dial) {
        text += (text.empty() ? "" : "; ") + who(p) + " did not accept a connection";
        ++missing;
      }
      for (int p = 0; p < config_.rank; ++p) {
        if (!peers_[p].link.up()) {
          text += (text.empty() ? "" : "; ") + who(p) + " did not connect";
          ++missing;
        }
      }
      throw PeerTimeout(
          Said{ctx_.prefix(), text + " within " + limit + never_joined_hint(missing)});
    }
    pollfd wake{acceptor_->wake_fd(), POLLIN, 0};
    tcp::poll_slice(&wake, 1, std::min(deadline, Clock::now() + std::chrono::milliseconds(50)));
  }
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "mesh ready: ", config_.size - 1, " link(s)");
}

void MeshGroup::dial(int p, Clock::time_point deadline, bool first) {
  Peer& peer = peers_[p];
  const uint64_t epoch = peer.epoch + 1;
  std::vector<tcp::Socket> sockets;
  const auto& addrs = config_.hosts[p];
  for (size_t i = 0; i < addrs.size(); ++i) {
    const auto address = tcp::Address::parse(addrs[i]);
    // A reconnect's TCP connect is answered by the peer host's kernel whatever
    // its process is doing: no answer within the peer timeout is an
    // unreachable host (the handshake after it may wait for a busy peer).
    const auto attempt = first ? std::min(deadline, Clock::now() + kDialAttempt)
                               : std::min(deadline, deadline_after(config_.peer_timeout_s));
    tcp::Socket s = tcp::Socket::connect(address, attempt);
    tcp::connector_handshake(s, id_, config_.rank, static_cast<uint32_t>(i), epoch, deadline);
    CHORUS_LOG(config_.verbose, ctx_.prefix(), "connected stream ", i, " to ", who(p), " at ",
               addrs[i], " (epoch ", epoch, ")");
    sockets.push_back(std::move(s));
  }
  peer.epoch = epoch;
  ++link_changes_;
  peer.link = tcp::Link(std::move(sockets), frame_limits_);
  peer.link.set_keepalive_after(config_.peer_timeout_s);
  peer.coll.clear();
  mailbox_.drop_partial(p);
}

void MeshGroup::take_accepted() {
  // Only when the acceptor's wake fd fired: take() costs a syscall and a lock.
  if (!accepted_ready_) return;
  accepted_ready_ = false;
  const size_t streams = config_.hosts[config_.rank].size();
  for (auto& a : acceptor_->take()) {
    if (a.rank < 0 || a.rank >= config_.rank) continue;  // the acceptor refuses these
    if (a.spent) {
      // It told the peer of a call this rank abandoned (Acceptor::owe); the
      // peer drops it. Taken as a link, it would swallow this rank's next
      // abort. Closing with the peer's record unread would reset it, maybe
      // before the peer read the abort: read what came first.
      char sink[4096];
      while (::recv(a.socket.fd(), sink, sizeof sink, MSG_DONTWAIT) > 0) {
      }
      continue;
    }
    Peer& peer = peers_[a.rank];
    if (a.epoch <= peer.epoch) continue;  // stale: a newer link is installed
    stage(peer.staged, a, streams);
  }
}

// Installs the newest complete connection from lower rank p, if one is newer
// than the current link (p re-established it: the old one is dead to p).
bool MeshGroup::install(int p) {
  take_accepted();
  Peer& peer = peers_[p];
  std::optional<CompleteLink> newest = newest_complete(peer.staged);
  if (!newest) return false;
  peer.epoch = newest->epoch;
  ++link_changes_;
  peer.link = tcp::Link(std::move(newest->sockets), frame_limits_);
  peer.link.set_keepalive_after(config_.peer_timeout_s);
  peer.staged.erase(peer.staged.begin(), peer.staged.upper_bound(peer.epoch));
  peer.coll.clear();
  mailbox_.drop_partial(p);
  peer.need = false;
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "link from ", who(p), " up (epoch ", peer.epoch, ")");
  return true;
}

// A dead process's listener refuses connections: that tells "slow" from "gone".
bool MeshGroup::refuses(int p, std::chrono::milliseconds patience) const {
  return listener_refuses(config_.hosts[p].front(), patience);
}

void MeshGroup::probe(int p) {
  if (refuses(p, std::chrono::milliseconds(500))) report_gone(p);
}

void MeshGroup::report_gone(int p) {
  // p may be a survivor that already left after reporting the rank that
  // really died (its report never reached us: our link to it was down).
  // Probe everyone, so the message names every rank that is gone.
  std::vector<int> gone;
  for (int q = 0; q < config_.size; ++q) {
    if (q == config_.rank) continue;
    if (q == p || refuses(q, std::chrono::milliseconds(200))) gone.push_back(q);
  }
  std::string text;
  if (gone.size() == 1) {
    text = who(p) + " is gone (its listener refuses connections) during " + op_;
    if (in_call_ && kind_ == Kind::Collective) {
      text += last_call_text(peers_[p].last_call, calls_.index());
    }
  } else {
    for (size_t i = 0; i < gone.size(); ++i) {
      text += (i == 0 ? "" : i + 1 == gone.size() ? " and " : ", ") + who(gone[i]);
    }
    text += " are gone (their listeners refuse connections) during " + op_;
  }
  throw LinkFailure(p, Said{ctx_.prefix(), text}, true, Reason::Unknown,
                    seen_by(text, config_.rank));
}

// Brings p's link back; false while waiting for a lower rank to dial us.
bool MeshGroup::recover(int p) {
  if (!dialer_of(p)) return install(p);
  try {
    dial(p, deadline_after(config_.timeout_s), false);
  } catch (const Interrupted&) {
    throw;
  } catch (const PeerError& e) {
    const auto* se = dynamic_cast<const tcp::SocketError*>(&e);
    if (se != nullptr && se->err() == ECONNREFUSED) report_gone(p);
    const bool silent = tcp_reconnect_reason(e) == Reason::Unreachable;
    std::string text = who(p) +
                       (silent ? " is unreachable (no answer to a reconnection) during "
                               : " could not be reconnected during ") +
                       op_ + ": " + e.what();
    if (!silent && in_call_ && kind_ == Kind::Collective) {
      text += last_call_text(peers_[p].last_call, calls_.index());
    }
    throw LinkFailure(p, Said{ctx_.prefix(), text}, false, tcp_reconnect_reason(e),
                      seen_by(text, config_.rank));
  }
  peers_[p].need = false;
  return true;
}

void MeshGroup::reset(int p, bool keep_frames) {
  Peer& peer = peers_[p];
  peer.sent_all = peer.link.sends_done();
  ++link_changes_;
  peer.link = tcp::Link();
  peer.need = true;
  if (!keep_frames) peer.coll.clear();
  mailbox_.drop_partial(p);
}

// Until p's link is up: dial it (higher p) or wait for p's dial, probing p's
// listener meanwhile (lower p).
void MeshGroup::ensure_link(int p) {
  Peer& peer = peers_[p];
  if (!dialer_of(p) && install(p)) return;
  peer.need = !peer.link.up();
  auto next_probe = Clock::now() + kProbeEvery;
  while (peer.need) {
    if (recover(p)) break;
    if (Clock::now() >= next_probe) {
      probe(p);
      next_probe = Clock::now() + kProbeEvery;
    }
    progress();
  }
}

}  // namespace chorus::mesh
