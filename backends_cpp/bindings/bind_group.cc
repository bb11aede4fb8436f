// Group handles and backend initialisation.
#include <pybind11/stl.h>

#include "call_site.h"
#include "chorus/backends/registry.h"
#include "chorus/ops.h"
#include "convert.h"

namespace chorus::bindings {

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
  m.def("single_group", &make_single_group, py::arg("backend") = "single",
        "A size-1 group whose collectives return their input.");
  m.def(
      "init",
      [](const std::string& backend, int rank, int size,
         std::vector<std::vector<std::string>> hosts, std::string token, std::string job_id,
         std::string hostname, double timeout, double peer_timeout, bool verbose,
         size_t segment_bytes, std::vector<int> listen_fds, std::string coordinator) {
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
        py::gil_scoped_release release;
        return init_backend(backend, options);
      },
      py::arg("backend"), py::arg("rank"), py::arg("size"), py::arg("hosts"), py::arg("token"),
      py::arg("job_id"), py::arg("hostname"), py::arg("timeout"), py::arg("peer_timeout") = 15.0,
      py::arg("verbose") = false, py::arg("segment_bytes") = 0,
      py::arg("listen_fds") = std::vector<int>{}, py::arg("coordinator") = "",
      "Connect this rank to its peers with the named backend.");
}

}  // namespace chorus::bindings
