#include "chorus/backends/ring/ring.h"

#include <cerrno>
#include <cstring>

#include "chorus/algorithms/reduce.h"
#include "chorus/backends/call_wire.h"
#include "chorus/backends/ring/ring_group.h"
#include "chorus/backends/tcp/call_failure.h"
#include "chorus/backends/tcp/call_record.h"
#include "chorus/backends/tcp/common.h"
#include "chorus/backends/tcp/link_setup.h"
#include "chorus/backends/tcp/poll_checks.h"
#include "chorus/backends/tcp/rendezvous.h"
#include "chorus/backends/tcp/split.h"
#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/common/logging.h"

namespace chorus::ring {
namespace {

using tcp::Clock;
using tcp::Link;
using Side = algo::Side;

constexpr size_t kDefaultSegment = size_t{1} << 20;
constexpr size_t kSmallBytes = 64 * 1024;
constexpr auto kAbortFlush = std::chrono::milliseconds(1000);
constexpr auto kProbeEvery = std::chrono::milliseconds(500);

struct P2PHeader {
  uint64_t nbytes;
  uint8_t dtype;
  uint8_t pad[7];
};

}  // namespace

RingGroup::RingGroup(GroupConfig config, std::vector<tcp::Listener> listeners)
    : config_(std::move(config)) {
  ctx_.backend = "ring";
  ctx_.rank = config_.rank;
  ctx_.size = config_.size;
  ctx_.hostname = config_.hostname;
  id_.token = config_.token;
  id_.group = tcp::group_hash(config_.job_id, config_.group_path);
  segment_bytes_ = config_.segment_bytes ? config_.segment_bytes : kDefaultSegment;
  small_bytes_ = std::min(kSmallBytes, segment_bytes_);
  // The ring's Sync frames are empty; its Data frames are one segment or one
  // call record (a WireDesc plus a small input), whichever is larger.
  frame_limits_.sync = 0;
  frame_limits_.p2p = sizeof(P2PHeader);
  frame_limits_.early_data = std::max(segment_bytes_, sizeof(WireDesc) + small_bytes_);
  tcp::AcceptorConfig ac = acceptor_config(config_, id_, "ring");
  ac.expected_rank = left();
  acceptor_ = std::make_unique<tcp::Acceptor>(std::move(listeners), ac);
  spin_ = tcp_spin(config_);
  yield_ = tcp_yield(config_);
  connect_initial();
}

RingGroup::~RingGroup() = default;

std::string RingGroup::who(int rank) const { return rank_and_address(config_, rank); }

// ---------------------------------------------------------------- set-up

void RingGroup::connect_initial() {
  // A neighbour this rank may not be able to reach (a split child's pair
  // that shares no network, tcp/reach.h) gets kUnroutedPatience, and the
  // error says why instead of blaming a rank that never joined.
  const auto patience = [&](int peer) {
    return unrouted_reason(config_, peer).empty() ? config_.timeout_s
                                                  : std::min(config_.timeout_s, kUnroutedPatience);
  };
  const auto hint = [&](int peer) {
    const std::string& why = unrouted_reason(config_, peer);
    return why.empty() ? never_joined_hint(1) : ": " + why;
  };
  const auto right_deadline = deadline_after(patience(right()));
  const std::string right_limit = tcp::seconds_text(patience(right()));
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "listening on ", acceptor_->addresses().front(),
             ", connecting to ", who(right()), " over ", config_.hosts[right()].size(),
             " socket(s)");
  try {
    connect_right(right_deadline, true);
  } catch (const PeerTimeout& e) {
    throw PeerTimeout(Said{ctx_.prefix(), who(right()) + " did not accept a connection within " +
                                              right_limit + " (" + e.what() + ")" + hint(right())});
  } catch (const PeerError& e) {
    if (Clock::now() >= right_deadline) {
      throw PeerTimeout(Said{ctx_.prefix(), who(right()) + " did not accept a connection within " +
                                                right_limit + " (" + e.what() + ")" +
                                                hint(right())});
    }
    throw PeerError(Said{ctx_.prefix(), "connecting to " + who(right()) + " failed: " + e.what()});
  }
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "connected to ", who(right()), "; waiting for ",
             who(left()));
  const auto left_deadline = deadline_after(patience(left()));
  while (!install_left()) {
    if (Clock::now() >= left_deadline) {
      throw PeerTimeout(Said{ctx_.prefix(), who(left()) + " did not connect within " +
                                                tcp::seconds_text(patience(left())) +
                                                hint(left())});
    }
    pollfd wake{acceptor_->wake_fd(), POLLIN, 0};
    tcp::poll_slice(&wake, 1, left_deadline);
  }
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "ring ready: ", who(left()), " -> me -> ",
             who(right()));
}

void RingGroup::connect_right(Clock::time_point deadline, bool retry) {
  link(Side::Right) = Link();
  ++right_epoch_;
  std::vector<tcp::Socket> sockets;
  const auto& addrs = config_.hosts[right()];
  for (size_t i = 0; i < addrs.size(); ++i) {
    const auto address = tcp::Address::parse(addrs[i]);
    // A reconnect's TCP connect is answered by the peer host's kernel whatever
    // its process is doing: no answer within the peer timeout is an
    // unreachable host (the handshake after it may wait for a busy peer).
    tcp::Socket s = retry
                        ? tcp::Socket::connect_retry(address, deadline)
                        : tcp::Socket::connect(
                              address, std::min(deadline, deadline_after(config_.peer_timeout_s)));
    tcp::connector_handshake(s, id_, config_.rank, static_cast<uint32_t>(i), right_epoch_,
                             deadline);
    CHORUS_LOG(config_.verbose, ctx_.prefix(), "connected stream ", i, " to ", who(right()), " at ",
               addrs[i], " (epoch ", right_epoch_, ")");
    sockets.push_back(std::move(s));
  }
  link(Side::Right) = Link(std::move(sockets), frame_limits_);
  link(Side::Right).set_keepalive_after(config_.peer_timeout_s);
}

bool RingGroup::install_left() {
  const size_t streams = config_.hosts[config_.rank].size();
  acceptor_woke_ = false;  // take() drains the wake fd
  for (auto& a : acceptor_->take()) {
    if (a.epoch <= left_epoch_) continue;  // stale: a newer link is installed
    stage(staged_, a, streams);
  }
  std::optional<CompleteLink> newest = newest_complete(staged_);
  if (!newest) return false;
  left_epoch_ = newest->epoch;
  acceptor_->set_min_epoch(left_epoch_);
  link(Side::Left) = Link(std::move(newest->sockets), frame_limits_);
  link(Side::Left).set_keepalive_after(config_.peer_timeout_s);
  staged_.erase(staged_.begin(), staged_.upper_bound(left_epoch_));
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "link from ", who(left()), " up (epoch ", left_epoch_,
             ")");
  return true;
}

// A dead process's listener refuses connections: that tells "slow" from "gone".
void RingGroup::probe_left() {
  // Anything but a refusal proves nothing: keep waiting.
  if (!listener_refuses(config_.hosts[left()].front(), std::chrono::milliseconds(500))) return;
  const std::string text = who(left()) + " is gone (its listener refuses connections) during " +
                           op_ + where_was(Side::Left);
  throw LinkFailure(left(), Said{ctx_.prefix(), text}, true, Reason::Unknown,
                    seen_by(text, config_.rank));
}

std::string RingGroup::where_was(Side side) const {
  return collective_ ? last_call_text(last_sync_[static_cast<int>(side)], calls_.index()) : "";
}

// Brings one side's link back; false while waiting for the left neighbour.
bool RingGroup::recover(Side side) {
  if (side == Side::Left) return install_left();
  try {
    connect_right(deadline_after(config_.timeout_s), false);
  } catch (const Interrupted&) {
    throw;
  } catch (const PeerError& e) {
    const bool silent = tcp_reconnect_reason(e) == Reason::Unreachable;
    const auto* se = dynamic_cast<const tcp::SocketError*>(&e);
    const bool gone = se != nullptr && se->err() == ECONNREFUSED;
    const std::string text = who(right()) +
                             (silent ? " is unreachable (no answer to a reconnection) during "
                                     : " could not be reconnected during ") +
                             op_ + ": " + e.what() + (silent ? "" : where_was(Side::Right));
    throw LinkFailure(right(), Said{ctx_.prefix(), text}, gone, tcp_reconnect_reason(e),
                      seen_by(text, config_.rank));
  }
  return true;
}

// ---------------------------------------------------------------- progress

void RingGroup::progress(int timeout_ms) {
  fds_.clear();
  links_[0].add_pollfds(fds_);
  const size_t n0 = fds_.size();
  links_[1].add_pollfds(fds_);
  // The acceptor's wake fd stays readable until install_left() drains it,
  // which a rank not waiting for its left link has no reason to do: watched
  // after it fired, it would end every poll at once (a spin).
  const bool watch_acceptor = !acceptor_woke_;
  if (watch_acceptor) fds_.push_back({acceptor_->wake_fd(), POLLIN, 0});
  const int rc = tcp::poll_spinning(fds_.data(), fds_.size(), timeout_ms, spin_, yield_);
  if (watch_acceptor && fds_.back().revents != 0) acceptor_woke_ = true;
  links_[0].handle(fds_.data());
  links_[1].handle(fds_.data() + n0);
  const auto now = Clock::now();
  if (poll_checks_.interrupt_due(rc == 0, now)) check_interrupt();
  if (poll_checks_.reach_due(now)) check_reachable();
  check_links();
}

void RingGroup::check_reachable() {
  for (int s = 0; s < 2; ++s) {
    if (!links_[s].up()) continue;
    const int p = peer(static_cast<Side>(s));
    tcp::check_silence(ctx_, config_.peer_timeout_s, p, who(p), links_[s].unacknowledged_ms(), op_);
  }
}

void RingGroup::check_links() {
  for (int s = 0; s < 2; ++s) {
    Link& l = links_[s];
    const auto side = static_cast<Side>(s);
    const int p = peer(side);
    switch (l.state()) {
      case Link::State::Up:
      case Link::State::Down: break;
      case Link::State::Aborted: {
        const tcp::Frame& f = l.abort_frame();
        const AbortWord w = decode_abort(f.aux0);
        const int culprit = w.culprit;
        const bool fatal = w.fatal;
        const uint64_t call = f.aux1;
        const std::string text(f.payload.begin(), f.payload.end());
        if (!fatal && call == calls_.index() && tolerant_[s]) {
          // The call this rank is entering failed on a neighbour it has not
          // met in it yet (no Sync): see CallCounter::skip_aborted.
          l = Link();
          need_[s] = true;
          if (calls_.skip_aborted()) {
            CHORUS_LOG(config_.verbose, ctx_.prefix(), "interrupted before call ", call,
                       ", which failed: this call is the next one");
            break;
          }
          throw calls_.late(culprit, op_, ctx_.prefix(), text);
        }
        if (entering_ && !fatal) {
          // It arrived while this rank was outside any call: the failed call
          // is one this rank never entered (or had finished). Reconnect.
          CHORUS_LOG(config_.verbose, ctx_.prefix(), "ignoring an abort of call ", call,
                     " this rank was not in: ", text);
          l = Link();
          need_[s] = true;
          break;
        }
        if (call < calls_.index() && fatal) {
          // A rank died in a call we had finished: the ring cannot recover.
          throw LinkFailure(culprit, Said{ctx_.prefix() + op_ + " aborted: ", text}, true,
                            w.reason);
        }
        if (call < calls_.index()) {
          // That rank failed in a call we had already finished: stale.
          CHORUS_LOG(config_.verbose, ctx_.prefix(), "ignoring a stale abort from ", who(p), ": ",
                     text);
          l = Link();
          need_[s] = true;
          if (!tolerant_[s]) {
            const std::string t =
                who(p) + " closed its link during " + op_ + " (after an earlier failure)";
            throw LinkFailure(p, Said{ctx_.prefix(), t});
          }
        } else if (call > calls_.index()) {
          // It failed in a call we have not reached yet: raise there.
          pending_abort_ = PendingAbort{culprit, call, text, fatal, w.reason};
          l = Link();
          need_[s] = true;
        } else {
          throw LinkFailure(culprit, Said{ctx_.prefix() + op_ + " aborted: ", text}, fatal,
                            w.reason);
        }
        break;
      }
      case Link::State::Closed:
      case Link::State::Failed: {
        if (tolerant_[s] && !l.has_frame()) {
          CHORUS_LOG(config_.verbose, ctx_.prefix(), "link to ", who(p), " is gone (",
                     l.failure_text(), "); reconnecting");
          l = Link();
          need_[s] = true;
          break;
        }
        // A peer that finished its part of the call may close (end of its
        // program, or a failure in its next call): an error only if we still
        // expect something on this link. Later use of it raises then.
        if (l.idle()) break;
        const uint64_t got = l.bytes_received() - rx_start_[s];
        const LostLink lost = lost_link(who(p), op_, l);
        throw LinkFailure(p,
                          Said{ctx_.prefix(), lost.text + " (after " + std::to_string(got) +
                                                  " bytes received from it in this call)"},
                          true, lost.reason, seen_by(lost.text, config_.rank));
      }
      case Link::State::Protocol: {
        const std::string text = "protocol error from " + who(p) + " during " + op_ + ": " +
                                 l.failure_text() + " (are all ranks calling the same operations?)";
        throw LinkFailure(p, Said{ctx_.prefix(), text}, false, Reason::Protocol);
      }
    }
  }
}

void RingGroup::name_call(Failure& failure, bool collective) const {
  name_failed_call(failure, config_, op_, collective ? calls_.index() : 0);
}

void RingGroup::fail_links(int culprit, const std::string& text, bool fatal, Reason reason) {
  const uint64_t aux0 = encode_abort(AbortWord{culprit, fatal, false, reason});
  for (auto& l : links_) {
    l.abort(aux0, calls_.index(), text, kAbortFlush);
    l = Link();
  }
  tolerant_[0] = tolerant_[1] = false;
}

RingGroup::HoldSegments::HoldSegments(RingGroup& group, bool on) : group_(on ? &group : nullptr) {
  if (group_ != nullptr) group_->hold_segments(sizeof(WireDesc) + group_->small_bytes_);
}

RingGroup::HoldSegments::~HoldSegments() {
  if (group_ != nullptr) group_->hold_segments(SIZE_MAX);
}

void RingGroup::hold_segments(size_t over) {
  frame_limits_.hold_over = over;  // links made during the call get it too
  for (auto& l : links_) l.set_limits(frame_limits_);
}

template <typename Body>
void RingGroup::run(const char* op, bool collective, Body&& body) {
  op_ = op;
  // During a collective, peers' segments wait in the socket until their
  // receive is posted: the window of receive slots is all the memory a
  // call's incoming data takes (call records, no larger, are read at once).
  HoldSegments hold(*this, collective);
  collective_ = collective;
  if (collective) calls_.enter();
  for (int s = 0; s < 2; ++s) rx_start_[s] = links_[s].bytes_received();
  try {
    if (collective) start_call();
    body();
    wait_sends();
  } catch (...) {
    // Abort both links (what a failure leaves dirty) and name the call.
    rethrow_call_failure(
        config_, ctx_, op_,
        [&](int culprit, const std::string& text, bool fatal, Reason reason) {
          fail_links(culprit, text, fatal, reason);
        },
        [&](Failure& failure) { name_call(failure, collective); });
  }
}

void RingGroup::start_call() {
  // An abort held for a later call: of this call, the late-entrant rule;
  // of a call beyond it, only a dead rank still fails it.
  if (pending_abort_ && !pending_abort_->fatal) {
    const PendingAbort a = *pending_abort_;
    pending_abort_.reset();
    // A neighbour failed this very call while this rank was still in its
    // previous one: see CallCounter::skip_aborted.
    if (a.call == calls_.index() && !calls_.skip_aborted()) {
      throw calls_.late(a.culprit, op_, ctx_.prefix(), a.text);
    }
  }
  if (pending_abort_ && pending_abort_->call <= calls_.index()) {
    const PendingAbort a = *pending_abort_;
    pending_abort_.reset();
    if (a.call == calls_.index()) {
      throw LinkFailure(a.culprit, Said{ctx_.prefix() + op_ + " aborted: ", a.text}, a.fatal,
                        a.reason);
    }
  }
  bool synced[2] = {false, false};
  tolerant_[0] = tolerant_[1] = true;
  // Read what arrived while this rank was outside any call, with the rule
  // above (check_links drops non-fatal aborts while entering_).
  with_flag_set(entering_, [&] { progress(0); });
  install_left();  // a newer connection from the left may already wait
  auto send_sync = [&](int s) {
    links_[s].post_send(tcp::FrameType::Sync, calls_.index(), wire_op(op_), nullptr, 0);
  };
  for (int s = 0; s < 2; ++s) {
    need_[s] = !links_[s].up() && !links_[s].has_frame();
    if (!need_[s]) send_sync(s);
  }
  // A neighbour's Sync that came for a later call than ours, on the link
  // still in place: it counts for the call it names.
  auto use_ahead = [&](int s) {
    const AheadSync a = ahead_[s];
    if (!a.set || a.index != calls_.index()) return;
    ahead_[s].set = false;
    if (a.epoch == link_epoch(s) && !need_[s]) {
      synced[s] = true;
      tolerant_[s] = false;
    }
  };
  // A neighbour at a later call has left ours: it failed there (no
  // collective completes without every rank). See CallCounter::skip_aborted.
  auto neighbour_ahead = [&](int s, uint64_t theirs) {
    const std::string why =
        who(peer(static_cast<Side>(s))) + " has left it for call #" + std::to_string(theirs);
    if (!calls_.skip_aborted()) {
      throw LateEntrant(Said{ctx_.prefix(), calls_.late_text(op_, why)},
                        Failure{Reason::Late, peer(static_cast<Side>(s))});
    }
    // Interrupted on the way: this call is the neighbours' next one; what
    // we sent is stale for them.
    for (int t = 0; t < 2; ++t) {
      synced[t] = false;
      if (!need_[t]) send_sync(t);
      use_ahead(t);
    }
  };
  for (int s = 0; s < 2; ++s) {
    if (ahead_[s].set && ahead_[s].index < calls_.index()) ahead_[s].set = false;
    if (ahead_[s].set && ahead_[s].index > calls_.index()) neighbour_ahead(s, ahead_[s].index);
    use_ahead(s);
  }
  auto next_probe = Clock::now() + kProbeEvery;
  while (true) {
    // Right first: connecting never needs the neighbour's main thread.
    for (int s : {1, 0}) {
      if (synced[s]) continue;
      const auto side = static_cast<Side>(s);
      if (side == Side::Left && install_left()) {
        need_[s] = false;
        send_sync(s);
      } else if (need_[s] && recover(side)) {
        need_[s] = false;
        send_sync(s);
      }
      if (need_[s] && side == Side::Left && Clock::now() >= next_probe) {
        probe_left();
        next_probe = Clock::now() + kProbeEvery;
      }
      {
        if (auto f = links_[s].take()) {
          if (f->type == tcp::FrameType::Sync) last_sync_[s].saw(f->aux0, f->aux1);
          if (f->type != tcp::FrameType::Sync) {
            const std::string text = "protocol error: " + who(peer(side)) + " sent a " +
                                     tcp::frame_type_name(f->type) + " frame at the start of " +
                                     op_ + " (are all ranks calling the same operations?)";
            throw LinkFailure(peer(side), Said{ctx_.prefix(), text}, false, Reason::Protocol);
          }
          if (f->aux0 < calls_.index()) {
            // The neighbour is behind, in a call this rank has left: it learns
            // so from our Sync and sends its Sync of this call next.
            CHORUS_LOG(config_.verbose, ctx_.prefix(), who(peer(side)), " is at call ", f->aux0,
                       ", this rank at ", calls_.index(), ": waiting for its next Sync");
            continue;
          }
          if (f->aux0 > calls_.index()) {
            ahead_[s] = AheadSync{f->aux0, link_epoch(s), true};
            neighbour_ahead(s, f->aux0);
            continue;
          }
          synced[s] = true;
          tolerant_[s] = false;
        }
      }
    }
    if (synced[0] && synced[1]) break;
    progress();
  }
}

// ---------------------------------------------------------------- RingPair

uint64_t RingGroup::isend(Side to, const void* data, size_t n) {
  return link(to).post_send(tcp::FrameType::Data, 0, 0, data, n);
}

void RingGroup::wait_send(Side to, uint64_t ticket) {
  while (!link(to).send_done(ticket)) progress();
}

void RingGroup::isend_owned(Side to, std::vector<uint8_t> bytes) {
  link(to).post_send_owned(tcp::FrameType::Data, 0, 0, std::move(bytes));
}

uint64_t RingGroup::irecv(Side from, void* data, size_t n) { return link(from).post_recv(data, n); }

void RingGroup::wait_recv(Side from, uint64_t ticket) {
  while (!link(from).recv_done(ticket)) {
    if (!link(from).up()) {
      check_links();
      if (!pending_abort_) {
        const LostLink lost = lost_link(who(peer(from)), op_, link(from));
        throw LinkFailure(peer(from), Said{ctx_.prefix(), lost.text}, false, lost.reason);
      }
      const std::string text =
          "the link to " + who(peer(from)) + " closed during " + op_ + ": " + pending_abort_->text;
      throw LinkFailure(peer(from), Said{ctx_.prefix(), text}, false, pending_abort_->reason);
    }
    progress();
  }
  check_links();
}

std::vector<uint8_t> RingGroup::recv_bytes(Side from) {
  while (true) {
    if (auto f = link(from).take()) {
      if (f->type != tcp::FrameType::Data) {
        const std::string text = "protocol error: " + who(peer(from)) + " sent a " +
                                 tcp::frame_type_name(f->type) + " frame during " + op_;
        throw LinkFailure(peer(from), Said{ctx_.prefix(), text}, false, Reason::Protocol);
      }
      return std::move(f->payload);
    }
    if (!link(from).up()) {
      const LostLink lost = lost_link(who(peer(from)), op_, link(from));
      throw LinkFailure(peer(from), Said{ctx_.prefix(), lost.text}, false, lost.reason);
    }
    progress();
  }
}

void RingGroup::wait_sends() {
  while (!(links_[0].sends_done() && links_[1].sends_done())) progress();
}

// ---------------------------------------------------------------- collectives

std::vector<std::vector<uint8_t>> RingGroup::agree(const CallDesc& desc, const void* data,
                                                   size_t n) {
  auto records = algo::ring_gather_records(*this, call_record(desc, data, n));
  agree_on_records(records, desc, small_bytes_, config_, ctx_, op_, recorder());
  return records;
}

void RingGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
  const size_t nbytes = desc.nbytes();
  run(collective_name(desc.kind, desc.op), true, [&] {
    const bool inline_data = small(nbytes);
    auto records = agree(desc, in, inline_data ? nbytes : 0);
    auto* dst = static_cast<uint8_t*>(out);
    if (inline_data) {
      // Reduce in rank order: the same operations, in the same order, everywhere.
      if (nbytes == 0) return;
      std::memcpy(dst, record_payload(records[0]), nbytes);
      for (size_t k = 1; k < records.size(); ++k) {
        kernel(dst, dst, record_payload(records[k]), desc.count);
      }
      return;
    }
    algo::ring_all_reduce(*this, kernel, dtype_size(desc.dtype), desc.count, segment_bytes_,
                          static_cast<const uint8_t*>(in), dst, scratch_);
  });
  trim_buffers();
}

void RingGroup::trim_buffers() {
  // After a call that completed (its sends drained): nothing points into them.
  if (scratch_.capacity() > kKeptBufferBytes) std::vector<uint8_t>().swap(scratch_);
}

void RingGroup::reduce_scatter(const CallDesc& desc, const void* in, void* out) {
  const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
  const size_t nbytes = desc.nbytes();
  const size_t elem = dtype_size(desc.dtype);
  const size_t block_count = desc.count / static_cast<uint64_t>(config_.size);
  const size_t block = block_count * elem;
  run(collective_name(desc.kind, desc.op), true, [&] {
    const bool inline_data = small(nbytes);
    auto records = agree(desc, in, inline_data ? nbytes : 0);
    auto* dst = static_cast<uint8_t*>(out);
    const size_t at = static_cast<size_t>(config_.rank) * block;
    if (inline_data) {
      if (block == 0) return;
      std::memcpy(dst, record_payload(records[0]) + at, block);
      for (size_t k = 1; k < records.size(); ++k) {
        kernel(dst, dst, record_payload(records[k]) + at, block_count);
      }
      return;
    }
    const auto layout = algo::layout_blocks(block_count, elem, config_.size);
    algo::ring_reduce_scatter_own(*this, layout, kernel, elem, segment_bytes_,
                                  static_cast<const uint8_t*>(in), dst, scratch_);
  });
  trim_buffers();
}

void RingGroup::all_gather(const CallDesc& desc, const void* in, void* out) {
  const size_t nbytes = desc.nbytes();
  const size_t elem = dtype_size(desc.dtype);
  run(collective_name(desc.kind, desc.op), true, [&] {
    const bool inline_data = small(nbytes);
    auto records = agree(desc, in, inline_data ? nbytes : 0);
    auto* dst = static_cast<uint8_t*>(out);
    if (inline_data) {
      gather_from_records(records, nbytes, dst);
      return;
    }
    std::memmove(dst + static_cast<size_t>(config_.rank) * nbytes, in, nbytes);
    const auto layout = algo::layout_blocks(desc.count, elem, config_.size);
    algo::ring_all_gather(*this, layout, elem, segment_bytes_, dst);
  });
}

void RingGroup::broadcast(const CallDesc& desc, void* buf) {
  const size_t nbytes = desc.nbytes();
  run(collective_name(desc.kind, desc.op), true, [&] {
    const bool inline_data = small(nbytes);
    const bool root = desc.root == config_.rank;
    auto records = agree(desc, buf, inline_data && root ? nbytes : 0);
    if (inline_data) {
      const auto& r = records[desc.root];
      if (r.size() != sizeof(WireDesc) + nbytes) {
        const std::string text = "protocol error: broadcast record of " + who(desc.root) + " has " +
                                 std::to_string(r.size()) + " bytes";
        throw LinkFailure(desc.root, Said{ctx_.prefix(), text}, false, Reason::Protocol);
      }
      if (!root && nbytes) std::memcpy(buf, record_payload(r), nbytes);
      return;
    }
    algo::ring_broadcast(*this, desc.root, dtype_size(desc.dtype), desc.count, segment_bytes_,
                         static_cast<uint8_t*>(buf));
  });
}

void RingGroup::barrier() {
  CallDesc desc;
  desc.kind = Collective::Barrier;
  run("barrier", true, [&] { agree(desc, nullptr, 0); });
}

// ---------------------------------------------------------------- point to point

void RingGroup::send(const void* buf, size_t nbytes, Dtype dtype, int dst, int /*tag: always 0*/) {
  if (dst != left() && dst != right()) {
    throw UsageError(Said{ctx_.prefix(), "send to rank " + std::to_string(dst) +
                                             ": the ring backend only connects neighbours (ranks " +
                                             std::to_string(left()) + " and " +
                                             std::to_string(right()) +
                                             "); use the mesh backend for any-to-any send/recv"});
  }
  // N = 2: both neighbours are the same rank; sends go right, receives come
  // from the left, which is the same connection seen from the other end.
  const Side side = dst == right() ? Side::Right : Side::Left;
  const int s = static_cast<int>(side);
  run("send", false, [&] {
    P2PHeader h{};
    h.nbytes = nbytes;
    h.dtype = static_cast<uint8_t>(dtype);
    // A send never receives on its link, so a dead link may just mean the
    // peer is re-establishing it: reconnect and start the message again.
    while (true) {
      tolerant_[s] = true;
      need_[s] = !links_[s].up();
      auto next_probe = Clock::now() + kProbeEvery;
      while (need_[s]) {
        if (recover(side)) {
          need_[s] = false;
          break;
        }
        if (side == Side::Left && Clock::now() >= next_probe) {
          probe_left();
          next_probe = Clock::now() + kProbeEvery;
        }
        progress();
      }
      Link& l = links_[s];
      l.post_send(tcp::FrameType::P2P, calls_.index(), 0, &h, sizeof h);
      const auto* p = static_cast<const uint8_t*>(buf);
      for (size_t at = 0; at < nbytes; at += segment_bytes_) {
        l.post_send(tcp::FrameType::Data, 0, 0, p + at, std::min(segment_bytes_, nbytes - at));
      }
      while (links_[s].up() && !links_[s].sends_done()) progress();
      if (links_[s].up()) break;
      progress();  // lets check_links classify the failure (may throw)
    }
    tolerant_[s] = false;
  });
}

void RingGroup::recv(void* buf, size_t nbytes, Dtype dtype, int src, int /*tag: always 0*/) {
  if (src != left() && src != right()) {
    throw UsageError(Said{ctx_.prefix(), "recv from rank " + std::to_string(src) +
                                             ": the ring backend only connects neighbours (ranks " +
                                             std::to_string(left()) + " and " +
                                             std::to_string(right()) +
                                             "); use the mesh backend for any-to-any send/recv"});
  }
  const Side side = src == left() ? Side::Left : Side::Right;
  const int s = static_cast<int>(side);
  run("recv", false, [&] {
    std::optional<tcp::Frame> header;
    tolerant_[s] = true;
    // Frames that arrived before the peer closed are still ours to take.
    need_[s] = !links_[s].up() && !links_[s].has_frame();
    auto next_probe = Clock::now() + kProbeEvery;
    while (true) {
      if (need_[s] && recover(side)) need_[s] = false;
      if (need_[s] && side == Side::Left && Clock::now() >= next_probe) {
        probe_left();
        next_probe = Clock::now() + kProbeEvery;
      }
      header = links_[s].take();
      if (header) break;
      progress();
    }
    tolerant_[s] = false;
    if (header->type != tcp::FrameType::P2P || header->payload.size() != sizeof(P2PHeader)) {
      const std::string text = "protocol error: expected a message from send() by " + who(src) +
                               ", got a " + tcp::frame_type_name(header->type) +
                               " frame (are both ranks calling matching operations?)";
      throw LinkFailure(src, Said{ctx_.prefix(), text}, false, Reason::Protocol);
    }
    P2PHeader h;
    std::memcpy(&h, header->payload.data(), sizeof h);
    const bool match = h.nbytes == nbytes && h.dtype == static_cast<uint8_t>(dtype);
    std::vector<uint8_t> scratch;
    if (!match) scratch.resize(std::min<size_t>(segment_bytes_, h.nbytes));
    auto* p = static_cast<uint8_t*>(buf);
    std::vector<uint64_t> tickets;
    for (size_t at = 0; at < h.nbytes; at += segment_bytes_) {
      const size_t len = std::min<size_t>(segment_bytes_, h.nbytes - at);
      // A mismatched message is drained segment by segment into scratch.
      tickets.push_back(irecv(side, match ? p + at : scratch.data(), len));
      if (!match) wait_recv(side, tickets.back());
    }
    for (uint64_t t : tickets) wait_recv(side, t);
    if (!match) {
      std::string sent_type = "?";
      if (h.dtype <= static_cast<uint8_t>(kLastDtype)) {
        sent_type = dtype_name(static_cast<Dtype>(h.dtype));
      }
      throw UsageError(Said{ctx_.prefix(), "recv from " + who(src) + ": it sent " +
                                               std::to_string(h.nbytes) + " bytes of " + sent_type +
                                               ", this rank expected " + std::to_string(nbytes) +
                                               " bytes of " + dtype_name(dtype)});
    }
  });
}

// ---------------------------------------------------------------- split

GroupPtr RingGroup::split(int color, int key) {
  const int n = config_.size;
  tcp_split::Child child = tcp_split::split_child(*this, config_, color, key, split_count_++,
                                                  [n](int a, int b) { return b == (a + 1) % n; });
  if (child.config.size == 1) return make_single_group("ring");
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "split color ", color, ": rank ", child.config.rank,
             "/", child.config.size, " of group ", child.config.group_path);
  return std::make_shared<RingGroup>(std::move(child.config), std::move(child.listeners));
}

// ---------------------------------------------------------------- entry points

bool is_available() { return true; }

GroupPtr init(const InitOptions& options) {
  if (options.size == 1) return make_single_group("ring");
  // The hostfile and launcher fds, or (no hostfile) a rendezvous at the coordinator.
  rendezvous::Endpoints endpoints = rendezvous::endpoints(options, "ring");
  return std::make_shared<RingGroup>(world_config(options, std::move(endpoints.hosts)),
                                     std::move(endpoints.listeners));
}

}  // namespace chorus::ring
