"""Batches prefetched to the devices: the same global batches in the same order, a bounded queue, errors raised."""
import itertools
import threading
import time

import jax
import numpy as np
import pytest

from configs import train_synthetic_tiny
from rflav_jax.models.flav import flav_from_config
from rflav_jax.train import input as train_input, parallel


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh(1)


def test_prefetched_batches_are_the_host_batches_as_global_arrays_in_order(mesh):
  config = train_synthetic_tiny.get_config("micro")
  model = flav_from_config(config.model)
  read = lambda: train_input.host_batches(config, model, train_input.data_source(config.data), None, start_step=3)
  prefetched = train_input.prefetch_to_devices(read(), mesh, size=2)
  for host, placed in zip(itertools.islice(read(), 6), prefetched):
    assert placed.keys() == host.keys()
    for name, value in host.items():
      assert isinstance(placed[name], jax.Array) and placed[name].sharding == parallel.batch_sharding(mesh)
      np.testing.assert_array_equal(np.asarray(placed[name]), value)
  prefetched.close()


def test_the_queue_is_bounded_and_closing_stops_the_thread(mesh):
  produced = []

  def counting():
    for i in itertools.count():
      produced.append(i)
      yield {"x": np.full((1,), i, np.float32)}

  batches = train_input.prefetch_to_devices(counting(), mesh, size=3)
  assert [int(next(batches)["x"][0]) for _ in range(2)] == [0, 1]
  deadline = time.monotonic() + 30
  while len(produced) < 2 + 3 and time.monotonic() < deadline:  # the thread fills the queue ...
    time.sleep(0.05)
  time.sleep(0.5)  # ... and then waits
  assert 2 + 3 <= len(produced) <= 2 + 3 + 1  # 2 used, 3 queued, at most 1 in the thread's hand
  batches.close()
  assert not any(t.name == "prefetch_to_devices" and t.is_alive() for t in threading.enumerate())
  stopped = len(produced)
  time.sleep(0.3)
  assert len(produced) == stopped


def test_an_error_while_reading_is_raised_to_the_consumer(mesh):
  def failing():
    yield {"x": np.zeros((1,), np.float32)}
    raise ValueError("clip 7 cannot be decoded")

  batches = train_input.prefetch_to_devices(failing(), mesh)
  next(batches)
  with pytest.raises(ValueError, match="clip 7"):
    next(batches)
