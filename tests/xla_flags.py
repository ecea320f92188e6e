"""XLA flags for the test session and the runs it starts as subprocesses.

Test programs are tiny and run a few steps, so XLA's CPU compile time, not
run time, dominates the suite: without LLVM's optimisation passes it
compiles in about half the CPU time (network_test: 136 -> 78 CPU seconds).
The semantics are XLA's either way; only code generation differs.
"""

FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def xla_flags(devices: int) -> str:
  """`XLA_FLAGS` for a process with `devices` fake CPU devices."""
  return f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}'
