// The mesh as one phase of a hierarchical call (backends/hier).
#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/mesh/wire.h"

namespace chorus::mesh {

void MeshGroup::abandon(const char* op, int culprit, Reason reason, const std::string& text) {
  try {
    // The call fails at once, as if this rank had failed before sending its
    // record, with Abort frames marked abandoned (see AbortWord).
    run(op, Kind::Collective, -1, [&] {
      // An abort travels only on a live link (Link::abort), and after an
      // earlier failure the links are down until the next call dials them.
      // Dial the peers this rank dials (their acceptor threads answer,
      // whatever they do); leave the abort for the others to find when they
      // dial (Acceptor::owe): they may wait in this call already, or come to
      // it after this rank has left for good.
      accepted_ready_ = true;  // take what the acceptor holds, woken or not
      for (int p = 0; p < config_.size; ++p) {
        if (p == config_.rank) continue;
        if (!dialer_of(p)) {
          install(p);
        } else if (!peers_[p].link.up()) {
          try {
            recover(p);
          } catch (const PeerError&) {
            // Gone or unreachable: nobody waits there.
          }
        }
      }
      fail_links(culprit, text, false, reason, /*abandoned=*/true);
      // The aborts are out: leave as a late entrant does (no more to send).
      throw LateEntrant(Said{ctx_.prefix() + op + " aborted: ", text}, Failure{reason, culprit});
    });
  } catch (const PeerError&) {
    // Expected: the hierarchical call raises its own error.
  }
}

}  // namespace chorus::mesh
