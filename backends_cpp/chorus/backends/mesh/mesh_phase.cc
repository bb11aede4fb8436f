// The mesh as one phase of a hierarchical call (backends/hier).
#include "chorus/backends/mesh/mesh_group.h"

namespace chorus::mesh {

void MeshGroup::abandon(const char* op, int culprit, Reason reason, const std::string& text) {
  try {
    // The call fails at once, as if this rank had failed before sending its
    // record: run() forwards the failure to every peer (Abort frames with
    // this call's index) and resets the links, as for any failed call.
    run(op, Kind::Collective, -1, [&] {
      throw LinkFailure(culprit, ctx_.prefix() + op + " aborted: " + text, text, false, reason);
    });
  } catch (const PeerError&) {
    // Expected: the hierarchical call raises its own error.
  }
}

}  // namespace chorus::mesh
