// The record round that starts every collective: all-to-all (every rank sends
// its record to every peer), or by recursive doubling when the records are
// the whole call (doubling.h). README.md in this folder has the rules.
#include <cstring>

#include "chorus/backends/call_wire.h"
#include "chorus/backends/mesh/doubling.h"
#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/mesh/wire.h"
#include "chorus/common/logging.h"

namespace chorus::mesh {
namespace {

using tcp::Clock;

// Whether small calls' records travel by recursive doubling (README.md).
constexpr bool kDoublingRound = true;

}  // namespace

void MeshGroup::drop_stale_records(int p) {
  auto& coll = peers_[p].coll;
  while (!coll.empty() && coll.front().type == tcp::FrameType::Sync &&
         coll.front().aux0 < calls_.index()) {
    coll.pop_front();
  }
}

void MeshGroup::send_sync(int p, const std::vector<uint8_t>& payload, bool bundle) {
  // Each link owns its copy: a call that ends in UsageError returns before
  // its sends drained, and the payload is replaced by the next call.
  peers_[p].link.post_send_owned(tcp::FrameType::Sync, calls_.index(),
                                 wire_op(op_) | (bundle ? kBundleFlag : 0), payload);
}

MeshGroup::Taken MeshGroup::take_sync(int p, bool probe_now, const std::vector<uint8_t>* resend,
                                      bool bundle, tcp::Frame& out) {
  Peer& peer = peers_[p];
  // Dial first: connecting never needs the peer's main thread. But take
  // what p's old link delivered before it went (kept by reset): its
  // record may be there, and a new link starts with an empty queue.
  if (peer.coll.empty() && ((!dialer_of(p) && install(p)) || (peer.need && recover(p)))) {
    // A new link: what we sent on the old one is lost, and what p sent
    // on it was dropped (reset, install) before its record was taken.
    // p's record must come on this link, so until it does, the link
    // dying means reconnecting again: left intolerant, this rank would
    // ignore the dead link (check_links) and wait for that record
    // forever while p, which reset its end too, waits to be dialed.
    peer.tolerant = true;
    if (resend != nullptr) send_sync(p, *resend, bundle);
  }
  if (peer.need && probe_now) probe(p);
  while (!peer.coll.empty()) {
    tcp::Frame f = std::move(peer.coll.front());
    peer.coll.pop_front();
    if (f.type != tcp::FrameType::Sync) {
      const std::string text = "protocol error: " + who(p) + " sent a " +
                               tcp::frame_type_name(f.type) + " frame at the start of " + op_ +
                               " (are all ranks calling the same operations?)";
      throw LinkFailure(p, Said{ctx_.prefix(), text}, false, Reason::Protocol);
    }
    peer.last_call.saw(f.aux0, f.aux1 & ~kBundleFlag);
    if (f.aux0 < calls_.index()) {
      // p is behind, in a call this rank has left: it learns so from our
      // record and sends its record of this call next.
      CHORUS_LOG(config_.verbose, ctx_.prefix(), who(p), " is at call ", f.aux0, ", this rank at ",
                 calls_.index(), ": waiting for its next record");
      continue;
    }
    if (f.aux0 > calls_.index()) {
      // p has left this call: it failed there (no collective completes
      // without every rank). The record is for a later call of ours.
      const uint64_t theirs = f.aux0;
      peer.coll.push_front(std::move(f));
      const std::string why = who(p) + " has left it for call #" + std::to_string(theirs);
      if (!calls_.skip_aborted()) {
        throw LateEntrant(Said{ctx_.prefix(), calls_.late_text(op_, why)},
                          Failure{Reason::Late, p});
      }
      // Interrupted on the way: this call is p's next one. The round starts
      // again under the new index; what we sent is stale for all.
      return Taken::Restart;
    }
    // A bundle sent before its sender met the all-to-all round: that
    // round's record follows it, and until it comes the link dying means
    // reconnecting (route() took the bundle for the record).
    if (!bundle && (f.aux1 & kBundleFlag) != 0) {
      peer.tolerant = true;
      continue;
    }
    out = std::move(f);
    return Taken::Record;
  }
  return Taken::None;
}

std::vector<std::vector<uint8_t>> MeshGroup::start_call(std::vector<uint8_t> record,
                                                        bool doubling) {
  // An abort held for a later call: of this call, the late-entrant rule
  // (CallCounter::skip_aborted); of a call beyond it, only a dead rank still
  // fails it.
  if (pending_abort_ && !pending_abort_->fatal) {
    const PendingAbort a = *pending_abort_;
    pending_abort_.reset();
    if (a.call == calls_.index() &&
        !calls_.skip_aborted(a.abandoned ? std::optional<Reason>(a.reason) : std::nullopt)) {
      if (a.abandoned) {
        throw LinkFailure(a.culprit, Said{ctx_.prefix() + op_ + " aborted: ", a.text}, false,
                          a.reason);
      }
      throw calls_.late(a.culprit, op_, ctx_.prefix(), a.text);
    }
  }
  if (pending_abort_) {
    const PendingAbort a = *pending_abort_;
    pending_abort_.reset();
    throw LinkFailure(a.culprit, Said{ctx_.prefix() + op_ + " aborted: ", a.text}, true, a.reason);
  }
  record_ = std::move(record);
  const int n = config_.size, me = config_.rank;
  if (owes_) {
    // A peer still in an abandoned call learns from this call's record.
    acceptor_->forget_owed();
    owes_ = false;
  }
  for (int p = 0; p < n; ++p) {
    // Records of calls this rank has left (p was behind): p sends again.
    drop_stale_records(p);
    peers_[p].synced = p == me;
    // A record already queued (the peer is ahead of us) proves the link.
    peers_[p].tolerant = p != me && peers_[p].coll.empty();
  }
  // Read what arrived while this rank was outside any call (check_links
  // drops non-fatal aborts while entering_).
  with_flag_set(entering_, [&] { progress(0); });
  const uint64_t changes = link_changes_;
  bool links_up = true;
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    Peer& peer = peers_[p];
    // A newer connection from p may already wait. Nothing of this call came
    // on it yet: until p's record does, its death means reconnecting.
    if (!dialer_of(p) && install(p)) peer.tolerant = true;
    peer.need = !peer.link.up() && peer.coll.empty();
    links_up = links_up && peer.link.up();
  }
  std::vector<std::vector<uint8_t>> records(n);
  // The doubling round tells only its partners that this rank has left the
  // call before; the all-to-all round tells every peer. So after a failure
  // or a lost link (which may have taken an abort or a record with it, and
  // a peer may still wait in that call for our word), the all-to-all round.
  if (kDoublingRound && doubling && n > 2 && links_up && links_unchanged(changes)) {
    while (true) {
      const Doubled d = doubling_round(records);
      if (d == Doubled::Done) return records;
      if (d == Doubled::AllToAll) break;
    }
    // A peer runs the all-to-all round (its call is not one the records
    // finish, or its links changed since its last call): that round decides,
    // with every rank in it.
    CHORUS_LOG(config_.verbose, ctx_.prefix(), "a peer runs the all-to-all record round of call ",
               calls_.index(), ": so does this rank");
    records.assign(n, {});
    for (int p = 0; p < n; ++p) peers_[p].synced = p == me;
  }
  for (int p = 0; p < n; ++p) {
    if (p != me && !peers_[p].need) send_sync(p, record_, false);
  }
  auto next_probe = Clock::now() + kProbeEvery;
  while (true) {
    bool all = true;
    const bool probe_now = Clock::now() >= next_probe;
    for (int p = 0; p < n; ++p) {
      Peer& peer = peers_[p];
      if (peer.synced) continue;
      tcp::Frame f;
      const Taken taken = take_sync(p, probe_now, &record_, /*bundle=*/false, f);
      if (taken == Taken::Restart) {
        for (int q = 0; q < n; ++q) {
          peers_[q].synced = q == me;
          records[q].clear();
          if (q != me && !peers_[q].need) send_sync(q, record_, false);
        }
        all = false;
        break;
      }
      if (taken == Taken::Record) {
        records[p] = std::move(f.payload);
        peer.synced = true;
        peer.tolerant = false;
      }
      all = all && peer.synced;
    }
    if (probe_now) next_probe = Clock::now() + kProbeEvery;
    if (all) break;
    progress();
  }
  records[me] = record_;
  return records;
}

MeshGroup::Doubled MeshGroup::doubling_round(std::vector<std::vector<uint8_t>>& records) {
  const int n = config_.size, me = config_.rank;
  records.assign(n, {});
  records[me] = record_;
  for (int q = 0; q < n; ++q) peers_[q].synced = q == me;  // a restart's too
  for (const DoublingStep& step : doubling_steps_) {
    std::vector<uint8_t> bundle;
    if (step.send_to >= 0) {
      const int to = step.send_to;
      bundle = pack_bundle(records, to);
      // Sending is the whole step: the peer waits for it, so its link must
      // be up (a peer with a frame queued is ahead: it has what it needs).
      if (step.wait_from < 0 && !peers_[to].link.up() && peers_[to].coll.empty()) ensure_link(to);
      if (peers_[to].link.up()) send_sync(to, bundle, true);
    }
    if (step.wait_from < 0) continue;
    const int p = step.wait_from;
    auto next_probe = Clock::now() + kProbeEvery;
    while (true) {
      const bool probe_now = Clock::now() >= next_probe;
      tcp::Frame f;
      const Taken taken =
          take_sync(p, probe_now, step.send_to == p ? &bundle : nullptr, /*bundle=*/true, f);
      if (taken == Taken::Restart) return Doubled::Restart;
      if (taken == Taken::Record) {
        if ((f.aux1 & kBundleFlag) == 0) {
          peers_[p].coll.push_front(std::move(f));
          return Doubled::AllToAll;
        }
        const std::string wrong = unpack_bundle(f.payload, records);
        if (!wrong.empty()) {
          const std::string text = "protocol error from " + who(p) + " during " + op_ + ": " +
                                   wrong + " (are all ranks calling matching operations?)";
          throw LinkFailure(p, Said{ctx_.prefix(), text}, false, Reason::Protocol);
        }
        peers_[p].tolerant = false;
        break;
      }
      if (all_to_all_seen(p)) return Doubled::AllToAll;
      if (probe_now) next_probe = Clock::now() + kProbeEvery;
      progress();
      tell_bystanders();
    }
    // Their records arrived: they are in this call (CallCounter's late rule
    // and where a rank that is gone was both need that).
    for (int q = 0; q < n; ++q) {
      if (q == me || records[q].empty() || peers_[q].synced) continue;
      peers_[q].synced = true;
      if (records[q].size() >= sizeof(WireDesc)) {
        WireDesc wire;
        std::memcpy(&wire, records[q].data(), sizeof wire);
        const CallDesc desc = from_wire(wire);
        peers_[q].last_call.saw(calls_.index(), wire_op(collective_name(desc.kind, desc.op)));
      }
    }
  }
  for (int q = 0; q < n; ++q) {
    // Partners running this code never leave one out.
    if (records[q].empty()) {
      const std::string text = "protocol error during " + op_ + ": no record of " + who(q) +
                               " came in the doubling round";
      throw LinkFailure(q, Said{ctx_.prefix(), text}, false, Reason::Protocol);
    }
  }
  return Doubled::Done;
}

bool MeshGroup::links_unchanged(uint64_t before) {
  take_accepted();
  for (int p = 0; p < config_.size; ++p) {
    if (!peers_[p].staged.empty()) return false;
  }
  return link_changes_ == before;
}

void MeshGroup::tell_bystanders() {
  // A bystander whose link went down or came back may have lost our record
  // of the call before with the old link, and wait for it still. Our record
  // of this call tells it we left that call; in this call it is a bundle it
  // never takes (it waits for none from us). Once per call and peer.
  for (const int q : doubling_bystanders_) {
    Peer& peer = peers_[q];
    if (peer.told_call == calls_.index()) continue;
    if (!dialer_of(q)) {
      if (!install(q)) continue;
    } else {
      // A peer with a record queued is ahead: it waits for nothing of ours.
      if (peer.link.up() || !peer.coll.empty()) continue;
      peer.told_call = calls_.index();
      try {
        dial(q, deadline_after(config_.timeout_s), false);
      } catch (const Interrupted&) {
        throw;
      } catch (const PeerError& e) {
        // Gone after its last call, or unreachable: this round does not
        // need it, and a call that does will say so.
        CHORUS_LOG(config_.verbose, ctx_.prefix(), "could not reach ", who(q),
                   " to tell it of call ", calls_.index(), ": ", e.what());
        continue;
      }
    }
    peer.told_call = calls_.index();
    peer.tolerant = true;
    send_sync(q, record_, /*bundle=*/true);
  }
}

bool MeshGroup::all_to_all_seen(int partner) {
  for (int q = 0; q < config_.size; ++q) {
    if (q == config_.rank || q == partner) continue;
    // Only links that are up: a peer that must dial this rank first reaches
    // it through the partners (a rank in the all-to-all round sends its
    // record to every peer, and each waits for a partner that has it or
    // waits for one: the wait chain ends at that rank). Installing every
    // lower rank's new connection here would also take one it does not need.
    drop_stale_records(q);
    const auto& coll = peers_[q].coll;
    if (!coll.empty() && coll.front().type == tcp::FrameType::Sync &&
        coll.front().aux0 == calls_.index() && (coll.front().aux1 & kBundleFlag) == 0) {
      return true;
    }
  }
  return false;
}

}  // namespace chorus::mesh
