// PLACEHOLDER until the ring backend lands (being written now).
#include "chorus/backends/ring/ring.h"
#include "chorus/common/error.h"
namespace chorus::ring {
bool is_available() { return false; }
GroupPtr init(const InitOptions&) { throw BackendUnavailable("[chorus ring] not built yet"); }
}  // namespace chorus::ring
