// The mpi backend's group: one MPI communicator, chorus's calls mapped onto
// MPI's collectives.
//
// Every collective first agrees on the call: an MPI_Allgather of each rank's
// 24-byte WireDesc, compared on every rank, so a shape or dtype mismatch
// raises the same UsageError everywhere (MPI itself would read past buffers
// or hang) and leaves the communicator usable. barrier() is that round alone.
//
// Point to point: send() copies the message and posts MPI_Isend, so it
// returns at once like the other backends' send (two ranks may both send a
// large message before receiving without deadlocking); the copy is freed when
// MPI completes the send, checked at the start of every later call. Each
// message is a 16-byte header (bytes, dtype) that carries small payloads
// inline, or is followed by the payload in chunks; recv() checks the header
// against what it expected and drains a mismatched message before raising.
// Tags map to MPI tags on this group's private communicator.
//
// A group is used by one thread at a time, as with the other backends.
//
// Blocking: a call waits inside MPI and cannot be interrupted (MPI has no
// portable way to abandon a collective); Ctrl-C under mpirun is mpirun's to
// handle (it ends the job). MPI has no deadline either: CHORUS_TIMEOUT does
// not apply. Whether a waiting rank spins is the MPI library's choice: with
// Open MPI, mpi_yield_when_idle=1 (chorus/launch/mpirun.py passes it).
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/backends/mpi/mpi_api.h"

namespace chorus::mpi {

class Runtime;

// Most bytes one MPI call moves by default: MPI counts are ints, and a
// bounded chunk also bounds the staging copies of all_gather/sum_scatter.
// CHORUS_SEGMENT_BYTES (InitOptions::segment_bytes) overrides it, so tests
// reach the chunked paths with small arrays.
constexpr size_t kDefaultChunkBytes = size_t{1} << 30;

struct GroupConfig {
  std::string path;        // "" for the world group, "/0.1" for split 0, color 1
  std::string hostname;    // for error messages
  size_t chunk_bytes = 0;  // most bytes per MPI call (counts are ints)
  bool verbose = false;
};

class MpiGroup final : public GroupImpl {
 public:
  // Takes ownership of `comm` (freed in the destructor or by
  // Runtime::shutdown, whichever comes first).
  MpiGroup(Runtime& runtime, Comm comm, GroupConfig config);
  ~MpiGroup() override;
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }
  uint64_t calls_entered() const override { return calls_; }

  GroupPtr split(int color, int key) override;
  void all_reduce(const CallDesc& desc, const void* in, void* out) override;
  void all_gather(const CallDesc& desc, const void* in, void* out) override;
  void reduce_scatter(const CallDesc& desc, const void* in, void* out) override;
  void broadcast(const CallDesc& desc, void* buf) override;
  void barrier() override;
  void send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) override;
  void recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) override;
  bool supports_tags() const override { return true; }

  // Frees the communicator. Sends still in flight complete in the
  // background; their buffers move to `orphans`, which outlives them. Called
  // by the runtime, with its locks held, at most once.
  void release(std::vector<std::vector<uint8_t>>& orphans);

 private:
  struct PendingSend {
    Request request;
    std::vector<uint8_t> bytes;  // MPI reads from here until the send completes
  };

  template <typename Body>
  void run(const char* op, Body&& body);
  // Descriptor round; throws UsageError on every rank when ranks disagree.
  void agree(const CallDesc& desc);
  void check(int rc, const char* call) const;
  // Frees the buffers of completed sends; never waits.
  void reap_sends();
  void post_send(std::vector<uint8_t> bytes, int dst, int tag);
  // Elements per MPI call for elements of elem_size bytes.
  size_t chunk_elems(size_t elem_size) const;

  Runtime& runtime_;
  const Api& api_;
  Comm comm_;
  GroupConfig config_;
  int rank_ = 0;
  int size_ = 1;
  int tag_ub_ = 32767;  // the MPI standard's guaranteed minimum
  bool released_ = false;
  ErrorContext ctx_;
  std::string op_ = "set-up";
  uint64_t calls_ = 0;  // collectives entered (their descriptor rounds)
  std::list<PendingSend> pending_;
  uint64_t split_count_ = 0;
};

}  // namespace chorus::mpi
