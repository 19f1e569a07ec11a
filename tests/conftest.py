"""pytest hooks: the `slow` marker and the process settings the launchers also make."""
from rflav_jax import host_memory


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a test that takes tens of seconds or more; `-m \"not slow\"` leaves it out")
  # As the launchers do (rflav_jax.cli.run): keep freed memory, before the tests start JAX's CPU threads.
  host_memory.keep_freed_memory()
