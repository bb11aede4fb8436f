// Group handles and backend initialisation.
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <optional>

#include "call_site.h"
#include "chorus/algorithms/copy.h"
#include "chorus/backends/mpi/mpi.h"
#include "chorus/backends/registry.h"
#include "chorus/ops.h"
#include "chorus/transport/tcp/socket.h"
#include "convert.h"

namespace chorus::bindings {
namespace {

std::optional<std::chrono::microseconds> micros(std::optional<int64_t> us) {
  if (!us) return std::nullopt;
  return std::chrono::microseconds(*us);
}

}  // namespace

void register_group(py::module_& m) {
  py::class_<GroupImpl, GroupPtr>(m, "Group", "A set of ranks that run collectives together.")
      .def("rank", &GroupImpl::rank, "This process's rank in the group.")
      .def("size", &GroupImpl::size, "Number of ranks in the group.")
      .def_property_readonly(
          "backend", [](const GroupImpl& g) { return std::string(g.backend()); },
          "Name of the backend that moves this group's bytes.")
      .def(
          "split",
          [](GroupImpl& g, int color, int key) {
            note_call_site();
            py::gil_scoped_release release;
            return ops::split(g, color, key);
          },
          py::arg("color"), py::arg("key") = -1,
          "Split into sub-groups by color, ordered by key (as MPI_Comm_split).");

  m.def("compiled_backends", &compiled_backends, "Backends built into this module.");
  m.def("is_available", &backend_is_available, py::arg("backend"),
        "Whether the backend is compiled in and can run on this machine.");
  m.def("unavailable_reason", &backend_unavailable_reason, py::arg("backend"),
        "Why the backend cannot run here, or an empty string when it can.");
  m.def("host_of", &tcp::host_of, py::arg("address"),
        "The host of a rank's address as the backends group ranks (chorus.hostfile.host_of).");
  m.def(
      "shutdown_backend",
      [](const std::string& backend, bool abort) {
        // MPI_Finalize waits for every rank: other Python threads may run.
        py::gil_scoped_release release;
        shutdown_backend(backend, abort);
      },
      py::arg("backend"), py::arg("abort") = false,
      "Release a backend's process-wide state at exit (mpi: free communicators, then "
      "MPI_Finalize, or MPI_Abort when abort is true).");
  // Process-wide knobs that chorus.init() and chorus.is_available() hand over
  // from chorus/env.py before any backend needs them.
  m.def("set_stream_bytes", &set_streaming_threshold, py::arg("nbytes"),
        "Results of at least this many bytes are copied with streaming stores "
        "(CHORUS_STREAM_BYTES; 0 streams always).");
  m.def("set_mpi_library", &mpi::set_library, py::arg("name"),
        "The libmpi the mpi backend loads (CHORUS_MPI_LIBNAME; \"\" for the default names); "
        "no effect once it has tried to load one.");
  m.def("single_group", &make_single_group, py::arg("backend") = "single",
        "A size-1 group whose collectives return their input.");
  m.def(
      "init",
      [](const std::string& backend, int rank, int size,
         std::vector<std::vector<std::string>> hosts, std::string token, std::string job_id,
         std::string hostname, double timeout, double peer_timeout, bool verbose,
         size_t segment_bytes, std::vector<int> listen_fds, std::string coordinator,
         std::optional<int64_t> shm_spin_us, std::optional<int64_t> shm_yield_us, bool shm_cma,
         std::optional<size_t> shm_cma_bytes, std::optional<int64_t> tcp_spin_us,
         std::optional<int64_t> tcp_yield_us, int machine_ranks) {
        InitOptions options;
        options.rank = rank;
        options.size = size;
        options.hosts = std::move(hosts);
        options.token = std::move(token);
        options.job_id = std::move(job_id);
        options.hostname = std::move(hostname);
        options.timeout_s = timeout;
        options.peer_timeout_s = peer_timeout;
        options.verbose = verbose;
        options.segment_bytes = segment_bytes;
        options.listen_fds = std::move(listen_fds);
        options.coordinator = std::move(coordinator);
        options.tuning.shm_spin = micros(shm_spin_us);
        options.tuning.shm_yield = micros(shm_yield_us);
        options.tuning.shm_cma = shm_cma;
        options.tuning.shm_cma_bytes = shm_cma_bytes;
        options.tuning.tcp_spin = micros(tcp_spin_us);
        options.tuning.tcp_yield = micros(tcp_yield_us);
        options.machine_ranks = machine_ranks;
        py::gil_scoped_release release;
        return init_backend(backend, options);
      },
      py::arg("backend"), py::arg("rank"), py::arg("size"), py::arg("hosts"), py::arg("token"),
      py::arg("job_id"), py::arg("hostname"), py::arg("timeout"), py::arg("peer_timeout") = 15.0,
      py::arg("verbose") = false, py::arg("segment_bytes") = 0,
      py::arg("listen_fds") = std::vector<int>{}, py::arg("coordinator") = "",
      // Tuning (group_impl.h); None keeps the backend's default.
      py::arg("shm_spin_us") = py::none(), py::arg("shm_yield_us") = py::none(),
      py::arg("shm_cma") = true, py::arg("shm_cma_bytes") = py::none(),
      py::arg("tcp_spin_us") = py::none(), py::arg("tcp_yield_us") = py::none(),
      // The job's ranks on this machine (CHORUS_MACHINE_RANKS); 0: unknown.
      py::arg("machine_ranks") = 0, "Connect this rank to its peers with the named backend.");
}

}  // namespace chorus::bindings
