// The flight recorder from Python: call sites in, records out.
#include <atomic>
#include <string>
#include <unordered_map>

#include "call_site.h"
#include "chorus/backends/group_impl.h"
#include "chorus/common/flight_recorder.h"

// After Python.h (call_site.h brings it in through pybind11).
#include <frameobject.h>

namespace chorus::bindings {
namespace {

// Every code object a site was taken from, kept alive so that a record can
// name its file and line later; and whether it is chorus's own. Touched only
// with the GIL held. Bounded: past kMaxCodes new code objects (a kernel that
// ran that many distinct cells) are not recorded any more.
struct KnownCode {
  py::object code;
  bool ours;
};
constexpr size_t kMaxCodes = 1 << 16;
std::unordered_map<PyObject*, KnownCode>& known_codes() {
  static auto* codes = new std::unordered_map<PyObject*, KnownCode>();  // outlives finalization
  return *codes;
}
std::string& package_dir() {
  static auto* dir = new std::string();
  return *dir;
}
std::atomic<uint64_t> g_cell{0};
std::atomic<bool> g_sites{false};  // set_call_sites: CHORUS_FLIGHT_SITES, the kernel

// nullptr when the code object cannot be remembered any more.
const KnownCode* know(PyCodeObject* code) {
  auto& codes = known_codes();
  auto it = codes.find(reinterpret_cast<PyObject*>(code));
  if (it != codes.end()) return &it->second;
  if (codes.size() >= kMaxCodes) return nullptr;
  const auto object = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(code));
  const std::string file = py::str(object.attr("co_filename"));
  const std::string& dir = package_dir();
  const bool ours = !dir.empty() && file.compare(0, dir.size(), dir) == 0;
  return &codes.emplace(object.ptr(), KnownCode{object, ours}).first->second;
}

int32_t byte_offset(PyFrameObject* frame) {
#if PY_VERSION_HEX >= 0x030B0000
  return PyFrame_GetLasti(frame);
#else
  return frame->f_lasti * 2;  // 3.10 counts code units
#endif
}

}  // namespace

void note_call_site() {
  if (!g_sites.load(std::memory_order_relaxed) || FlightRecorder::default_capacity() == 0) return;
  PyFrameObject* frame = PyEval_GetFrame();  // borrowed: chorus's wrapper, usually
  py::object hold;                           // owns the frames walked back to
  for (int depth = 0; frame != nullptr && depth < 16; ++depth) {
    PyCodeObject* code = PyFrame_GetCode(frame);
    const KnownCode* known = know(code);
    Py_DECREF(code);  // known_codes() holds it
    if (known == nullptr) return;
    if (!known->ours) {
      set_next_call_site(
          CallSite{reinterpret_cast<uintptr_t>(code), byte_offset(frame), g_cell.load()});
      return;
    }
    PyFrameObject* back = PyFrame_GetBack(frame);
    hold = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(back));
    frame = back;
  }
}

py::object site_object(uintptr_t code, int32_t offset, uint64_t cell) {
  if (code == 0) return py::none();
  auto& codes = known_codes();
  auto it = codes.find(reinterpret_cast<PyObject*>(code));
  if (it == codes.end()) return py::none();
  const py::object& c = it->second.code;
  py::dict site;
  site["file"] = c.attr("co_filename");
  site["function"] = c.attr("co_name");
  site["line"] = PyCode_Addr2Line(reinterpret_cast<PyCodeObject*>(c.ptr()), offset);
  site["cell"] = cell != 0 ? py::object(py::int_(cell)) : py::none();
  return std::move(site);
}

namespace {

py::object record_object(const CallRecord& r) {
  py::dict d;
  d["id"] = r.id;
  d["seq"] = r.seq;
  d["op"] = r.op;
  d["collective"] = r.collective;
  d["state"] = call_state_name(r.state);
  d["failure"] =
      r.state == CallState::Failed ? py::object(py::str(call_end_name(r.end))) : py::none();
  d["reason"] = r.state == CallState::Failed && r.end == CallEnd::Peer
                    ? py::object(py::str(reason_name(r.reason)))
                    : py::none();
  d["culprit"] = r.culprit >= 0 ? py::object(py::int_(r.culprit)) : py::none();
  const bool has_data = std::string(r.op) != "barrier" && std::string(r.op) != "split";
  d["dtype"] = has_data ? py::object(py::str(dtype_name(r.dtype))) : py::none();
  if (has_data && r.ndim != 0xff) {
    py::list shape;
    for (int i = 0; i < r.ndim && i < 4; ++i) shape.append(r.dims[i]);
    if (r.ndim > 4) shape.append(py::ellipsis());
    d["shape"] = py::tuple(shape);
  } else if (has_data && r.collective) {
    d["shape"] = py::make_tuple(r.count);
  } else {
    d["shape"] = py::none();
  }
  d["nbytes"] = r.nbytes;
  d["root"] = r.root >= 0 ? py::object(py::int_(r.root)) : py::none();
  d["peer"] = r.peer >= 0 ? py::object(py::int_(r.peer)) : py::none();
  d["tag"] = r.tag >= 0 ? py::object(py::int_(r.tag)) : py::none();
  d["start"] = static_cast<double>(r.start_ns) / 1e9;
  d["end"] =
      r.end_ns != 0 ? py::object(py::float_(static_cast<double>(r.end_ns) / 1e9)) : py::none();
  d["site"] = site_object(r.site_code, r.site_offset, r.site_cell);
  d["thread"] = r.thread;
  return std::move(d);
}

}  // namespace

void register_debug(py::module_& m) {
  m.def(
      "flight_record",
      [](GroupImpl& g, size_t last) {
        py::list out;
        for (const CallRecord& r : g.recorder().snapshot(last)) out.append(record_object(r));
        return out;
      },
      py::arg("group"), py::arg("last") = SIZE_MAX,
      "The group's recorded calls, oldest first (dicts; chorus.debug.flight_record).");
  m.def(
      "set_flight_records", [](size_t n) { FlightRecorder::set_default_capacity(n); },
      py::arg("capacity"), "Records kept per group created from now on (0: none).");
  m.def(
      "set_call_site_package", [](const std::string& dir) { package_dir() = dir; },
      py::arg("directory"), "Frames of files under this directory are chorus's own.");
  m.def(
      "set_call_sites", [](bool on) { g_sites.store(on); }, py::arg("on"),
      "Record each call's Python line (about 0.1 us a call; without it only a running "
      "call's line is known, from the stack).");
  m.def(
      "set_call_site_cell", [](uint64_t cell) { g_cell.store(cell); }, py::arg("cell"),
      "The kernel's execution count, recorded with the calls it makes (0: none).");
}

}  // namespace chorus::bindings
