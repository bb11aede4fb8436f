"""What the tests and the benchmarks both stand on: emulated hosts (network namespaces, one sshd each).

Not part of the installed package; importable from the repository root.
"""
