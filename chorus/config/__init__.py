"""``chorus config``: discover how hosts are wired, check the topology, write the hostfile.

The steps, one module each:

* :mod:`~chorus.config.interfaces`: parse what a host says about its network interfaces
  (Linux ``ip -j addr``/``ip -j link``; macOS ``ifconfig``, ``networksetup`` and
  ``system_profiler SPThunderboltDataType -json``) into plain dataclasses.
* :mod:`~chorus.config.topology`: pure functions from every host's interfaces to candidate
  cables (point-to-point subnets, Thunderbolt port pairs), a shared switch, and a verdict:
  ring, full mesh, switch only, or broken (saying which cable is missing or miswired).
* :mod:`~chorus.config.probe`: confirm candidate links with real TCP connections over ssh,
  and find unaddressed cables through IPv6 link-local addresses.
* :mod:`~chorus.config.proposal`: the hostfile for ``--backend ring|mesh``.
* :mod:`~chorus.config.setup`: the commands that address unaddressed cables (and route a
  mesh), printed or run.
* :mod:`~chorus.config.dot`: the graphviz picture.
* :mod:`~chorus.config.command`: the ``chorus config`` run function tying them together.
"""

from __future__ import annotations
