// Single-copy reads from another process's memory (Linux cross-memory
// attach, process_vm_readv): the kernel copies straight from the peer's pages
// into ours, with no shared buffer in between, so a byte costs one copy
// instead of two (into the segment, out of it).
//
// The reader needs ptrace-read access to the peer: same user, and where
// Yama's ptrace_scope is 1 the peer must have allowed it
// (allow_peer_memory_reads()). Callers probe once and fall back to the
// shared segment when it is refused.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace chorus::shm {

// Lets processes of this user read this process's memory under Yama's
// ptrace_scope = 1 (PR_SET_PTRACER_ANY, as Open MPI does for the same reads).
// Harmless where Yama is absent.
void allow_peer_memory_reads();

// Reads n bytes at `remote` in process `pid` into `local`, looping over
// partial reads. Returns 0, or the errno of the read that failed (ESRCH: the
// process is gone; EPERM: not allowed; EFAULT: no such memory there).
int read_peer_memory(pid_t pid, const void* remote, void* local, size_t n);

}  // namespace chorus::shm
