"""Helpers shared by the tests: the test data in tests/data, errors, small models and inputs, media and checkpoints."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import av
import jax
import orbax.checkpoint as ocp
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial
from safetensors.numpy import save_file

from rflav_jax.convert.flav import OFFICIAL_ARGS, flav_from_official
from rflav_jax.models.flav import FLAV

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository
DATA = ROOT / "tests" / "data"


# Test data: golden fixtures of the official implementation, real mp4s, reference tables (see data/README.md).

def data_file(name: str) -> pathlib.Path:
  """Path of tests/data/<name>; raises FileNotFoundError naming the file when it is missing."""
  path = DATA / name
  if not path.is_file():
    raise FileNotFoundError(f"test data {path} is missing: it is part of the repository (see tests/data/README.md); "
                            f"restore it with `git checkout -- {path.relative_to(DATA.parents[1])}`")
  return path


def load_npz(name: str) -> dict:
  """tests/data/<name>, an .npz file, as {key: array}."""
  with np.load(data_file(name)) as data:
    return {k: data[k] for k in data.files}


def load_fixture(name: str) -> dict:
  """The golden fixture tests/data/fixtures/<name> as {key: array}."""
  return load_npz(f"fixtures/{name}")


def media_file(name: str) -> pathlib.Path:
  """Path of the real mp4 tests/data/media/<name>."""
  return data_file(f"media/{name}")


def rel_l2(actual, expected) -> float:
  """Relative L2 error ||actual - expected|| / ||expected|| in float64."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# Official (PyTorch) layouts -> ours.

def video_layout(x) -> np.ndarray:
  """Official (B, T, C, H, W) -> ours (B, T, H, W, C); also (n, B, C, H, W) -> (n, B, H, W, C)."""
  x = np.asarray(x)
  return np.moveaxis(x, -3, -1)


def audio_layout(x) -> np.ndarray:
  """Official mel (B, T, 1, N, F) -> ours (B, T, F, N); also (n, B, 1, N, F) -> (n, B, F, N)."""
  return np.swapaxes(np.asarray(x)[:, :, 0], -1, -2)


# Models and their inputs.

def fixture_model(data: dict):
  """(model, params) of a fixture's official weights; the flow settings in its config are dropped."""
  config = json.loads(str(data["config_json"]))
  state_dict = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
  return flav_from_official(state_dict, **{k: v for k, v in config.items() if k in OFFICIAL_ARGS})


def tiny_flav(num_classes: int = 0, seed: int = 0):
  """A 1-block FLAV (4x4x4 video, 8 mels, window 4) with random non-zero weights (zero-init layers too)."""
  model = FLAV(latent_size=4, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2, n_mels=8,
               predict_frames=4, num_classes=num_classes)
  labels = jnp.zeros((1,), jnp.int32) if num_classes else None
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 4, 4)), jnp.zeros((1, 4, 10, 8)),
                          jnp.zeros((1, 4)), labels)["params"]
  rng = np.random.default_rng(seed)  # numpy draws: no compilation per parameter shape
  return model, jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), shapes)


def tiny_inputs(model, key):
  """Random (video, mel, time, labels) of batch 2 in the model's window shape; labels are [0, 1]."""
  k1, k2, k3 = jax.random.split(key, 3)
  b, size = 2, model.latent_size
  v = jax.random.normal(k1, (b, model.predict_frames, size, size, model.in_channels))
  a = jax.random.normal(k2, (b, model.predict_frames, model.audio_columns, model.n_mels))
  t = jax.random.uniform(k3, (b, model.predict_frames))
  return v, a, t, jnp.array([0, 1])


def random_params(model, key):
  """Initialises `model`, then replaces every parameter by N(0, 0.2) so zero-initialised gates do not hide paths."""
  v, a, t, y = tiny_inputs(model, jax.random.key(1))
  params = model.init(key, v, a, t, y)["params"]
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [0.2 * np.asarray(jax.random.normal(k, x.shape)) for k, x in zip(keys, leaves)])


# Flow: starting noise and a velocity field with a known answer.

def noise_window(seed: int, model: FLAV, batch: int):
  """Standard-normal video (B, W, H, W, C) and mel (B, W, F, N) windows of the model's shape."""
  rng = np.random.default_rng(seed)
  size, frames = model.latent_size, model.predict_frames
  return (rng.standard_normal((batch, frames, size, size, model.in_channels), np.float32),
          rng.standard_normal((batch, frames, model.audio_columns, model.n_mels), np.float32))


def point_mass_velocity(x1_v, x1_a) -> Partial:
  """The exact velocity field of data that is always (x1_v, x1_a), frames (H, Wd, C) and (F, N).

  There x = t x1 + (1 - t) eps, so x1 - eps = (x1 - x) / (1 - t): Euler steps (plain or stochastic) reach x1
  exactly at t = 1.
  """
  def velocity(x1_v, x1_a, v, a, t):
    per_frame = lambda x: (1.0 - t).reshape(t.shape + (1,) * (x.ndim - 2))
    return (x1_v - v) / per_frame(v), (x1_a - a) / per_frame(a)

  return Partial(velocity, jnp.asarray(x1_v), jnp.asarray(x1_a))


# Media written on the fly.

def moving_gradient(num_frames, height=48, width=64):
  """Smooth frames that change over time, as generated video does."""
  y, x = np.mgrid[:height, :width]
  t = np.arange(num_frames)[:, None, None]
  r = 128 + 100 * np.sin(x / 9 + t / 3)
  g = 128 + 100 * np.cos(y / 7 - t / 4)
  b = 128 + 60 * np.sin((x + y) / 13 + t / 5)
  return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def write_video_only(path, num_frames=5):
  """An mp4 with an H.264 stream and no audio, written with PyAV directly."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i, frame in enumerate(moving_gradient(num_frames)):
      image = av.VideoFrame.from_ndarray(frame, format="rgb24")
      image.pts = i
      container.mux(stream.encode(image))
    container.mux(stream.encode(None))


# Checkpoints: release folders and exact digests of what was loaded.

def fixture_release(tmp_path, fmt):
  """A release folder with the small conditional fixture's weights in `fmt`; returns (folder, fixture).

  fmt: "safetensors", or "pt" for a DiT-style training checkpoint written by torch (a test extra).
  """
  d = load_fixture("flav_small_cond_causal.npz")
  state_dict = {k[len("param/"):]: v for k, v in d.items() if k.startswith("param/")}
  folder = tmp_path / f"release_{fmt}"
  folder.mkdir()
  config = json.loads(str(d["config_json"]))
  (folder / "config.json").write_text(json.dumps({**config, "grad_ckpt": True, "audio_fr": 16000}))
  if fmt == "safetensors":
    save_file(state_dict, str(folder / "model.safetensors"))
  else:  # a training checkpoint as DiT-style code saves it: {"model", "ema", "opt"}, DDP "module." prefixes
    import torch  # pylint: disable=g-import-not-at-top
    ema = {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()}
    torch.save({"model": {k: v * 0 for k, v in ema.items()}, "ema": ema, "args": {"lr": 1e-4}}, folder / "ckpt.pt")
  return folder, d


def flat(tree, prefix=""):
  """{path: array or value} of nested dicts."""
  if isinstance(tree, dict):
    return {k2: v2 for k, v in tree.items() for k2, v2 in flat(v, f"{prefix}{k}/").items()}
  return {prefix.rstrip("/"): tree}


def digest(tree):
  """What a loaded checkpoint holds, exactly: {path: [dtype, shape, sha256 of the bytes] or repr}."""
  return {k: [v.dtype.str, list(v.shape), hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()]
          if isinstance(v, np.ndarray) else repr(v) for k, v in flat(tree).items()}


def saved_state(workdir, step=None) -> dict:
  """The train state stored at `step` (default: the newest) as numpy arrays."""
  with ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints") as manager:
    step = manager.latest_step() if step is None else step
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as checkpointer:  # onto this process's first device, whatever saved it
    metadata = checkpointer.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    state = checkpointer.restore(path, target)
  return jax.tree.map(np.asarray, state)


# Subprocesses.

def run_on_cpu_devices(script: str, devices: int, timeout: float = 600) -> str:
  """stdout of `python -c script` (dedented) run from the repository with `devices` virtual CPU devices and the
  tests' modules importable; asserts that it succeeded."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout
