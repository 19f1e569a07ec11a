"""Records what MM-Diffusion's AudioCLIP code computes for FAD on small random inputs: tests/data/audioclip_fad.npz.

The reference is MM-Diffusion (https://github.com/researchmm/MM-Diffusion) at make_eval_fixtures.COMMIT:
  evaluations/AudioCLIP/model/esresnet/base.py, fbsp.py, attention.py   ESResNeXtFBSP, AudioCLIP's audio network
  evaluations/AudioCLIP/model/audioclip.py      the audio settings AudioCLIP builds it with (its __init__ defaults)
  evaluations/AudioCLIP/utils/transforms.py     scale, frame_signal
  evaluations/AudioCLIP/get_embedding.py        preprocess_audio, what the evaluator applies before AudioCLIP
  mm_diffusion/evaluator.py                     AUDIO_RATE, AUDIO_SIZE (the clip length)
The script clones the repository into a scratch folder and imports the three esresnet files as they are; what they
import from the rest of AudioCLIP's code (its trainer's AbstractNet, two functions of utils/transforms.py) is taken
from those files too, and torchvision, whose pretrained networks are not used, is stubbed. The zero padding of
MultimodalDataset.get_item (mm_diffusion/multimodal_datasets.py) is a few lines, written out below. The network
runs with torch on the CPU, with random weights drawn by tests/audioclip_testing.py.

The network's input scaling, utils/transforms.py's `scale`, divides by 65535. Torch divides on the CPU, but on a
GPU (where MM-Diffusion's evaluation ran) it multiplies a tensor divided by a Python number by the number's float32
reciprocal (aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu). The inputs AudioCLIP receives there sit so close to
float32's resolution that this changes the result, so the FAD embeddings are recorded both ways: as the code runs
on the CPU, and with `scale` evaluated as on a GPU (`scale_as_on_cuda`).

  python tools/make_audioclip_fixtures.py [--mm-diffusion URL_OR_PATH]
"""
import argparse
import ast
import importlib
import json
import math
import pathlib
import sys
import tempfile
import types

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]
# pylint: disable=wrong-import-position
import audioclip_testing
from make_eval_fixtures import COMMIT, REPOSITORY, checkout, function_from, import_file

SEED = 0
AUDIO_SETTINGS = ("n_fft", "hop_length", "win_length", "window", "normalized", "onesided", "spec_height",
                  "spec_width", "apply_attention")


def import_esresnet(repo: pathlib.Path) -> types.ModuleType:
  """evaluations/AudioCLIP/model/esresnet/fbsp.py, imported with what it needs of AudioCLIP's other modules."""
  root = repo / "evaluations/AudioCLIP"
  transforms = types.ModuleType("utils.transforms")
  transforms.__dict__.update(torch=torch, math=math)
  for name in ("scale", "frame_signal"):
    function_from(root / "utils/transforms.py", name, transforms.__dict__)
  utils = types.ModuleType("utils")
  utils.__path__, utils.transforms = [], transforms
  model = types.ModuleType("model")
  model.__path__ = [str(root / "model")]
  esresnet = types.ModuleType("model.esresnet")
  esresnet.__path__ = [str(root / "model/esresnet")]
  sys.modules.update({
      "ignite_trainer": import_file(root / "ignite_trainer/_interfaces.py", "ignite_trainer"),
      "torchvision": types.SimpleNamespace(models=types.SimpleNamespace(resnet50=None, resnext50_32x4d=None)),
      "utils": utils, "utils.transforms": transforms, "model": model, "model.esresnet": esresnet})
  return importlib.import_module("model.esresnet.fbsp")


def audioclip_defaults(repo: pathlib.Path) -> dict:
  """The keyword defaults of AudioCLIP.__init__, with which the evaluator builds it."""
  tree = ast.parse((repo / "evaluations/AudioCLIP/model/audioclip.py").read_text())
  init = next(node for cls in tree.body if isinstance(cls, ast.ClassDef) and cls.name == "AudioCLIP"
              for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
  names = [a.arg for a in init.args.args][-len(init.args.defaults):]
  return {name: ast.literal_eval(value) for name, value in zip(names, init.args.defaults)}


def evaluator_clip_samples(repo: pathlib.Path) -> tuple[int, list[int]]:
  """AUDIO_RATE and AUDIO_SIZE of mm_diffusion/evaluator.py."""
  namespace = {}
  for node in ast.parse((repo / "mm_diffusion/evaluator.py").read_text()).body:
    if isinstance(node, ast.Assign) and node.targets[0].id in ("AUDIO_RATE", "AUDIO_SIZE"):
      code = compile(ast.Module(body=[node], type_ignores=[]), "evaluator.py", "exec")
      exec(code, namespace)  # pylint: disable=exec-used
  return namespace["AUDIO_RATE"], namespace["AUDIO_SIZE"]


def scale_as_on_cuda(old_value, old_min, old_max, new_min, new_max):
  """utils/transforms.py's scale with torch's GPU rounding: the division by old_range is a product with its float32
  reciprocal."""
  old_range = old_max - old_min
  new_range = new_max - new_min
  reciprocal = torch.tensor(1.0, dtype=old_value.dtype) / torch.tensor(old_range, dtype=old_value.dtype)
  return (((old_value - old_min) * new_range) * reciprocal) + new_min


def padded(raw: np.ndarray, audio_size: list[int]) -> np.ndarray:
  """MultimodalDataset.get_item: one channel (1, n) in [-1, 1] cut or zero-padded to audio_size, float64."""
  audio = np.zeros(audio_size)
  if raw.shape[1] < audio_size[1]:
    audio[:, :raw.shape[1]] = raw
  else:
    audio = raw[:, :audio_size[1]]
  return audio


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--mm-diffusion", default=REPOSITORY, help="URL or local clone of MM-Diffusion")
  parser.add_argument("--output", default=str(ROOT / "tests/data" / audioclip_testing.FIXTURE))
  args = parser.parse_args()
  torch.manual_seed(SEED)
  torch.set_grad_enabled(False)
  rng = np.random.default_rng(SEED)
  with tempfile.TemporaryDirectory() as scratch:
    repo = checkout(args.mm_diffusion, pathlib.Path(scratch))
    fbsp = import_esresnet(repo)
    defaults = audioclip_defaults(repo)
    audio_rate, audio_size = evaluator_clip_samples(repo)
    preprocess_audio = function_from(repo / "evaluations/AudioCLIP/get_embedding.py", "preprocess_audio", {})
    settings = {k: defaults[k] for k in AUDIO_SETTINGS}
    model = fbsp.ESResNeXtFBSP(**settings, num_classes=defaults["embed_dim"], pretrained=False)  # as AudioCLIP does
    model.eval()
    state = model.state_dict()
    names, shapes = list(state), [tuple(v.shape) for v in state.values()]
    weights = audioclip_testing.random_audioclip_state_dict(names, shapes, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    data = {"source": f"{REPOSITORY} {COMMIT}", "torch_version": torch.__version__, "weight_seed": SEED,
            "state_dict_json": json.dumps([names, shapes]), "audio_settings_json": json.dumps(settings),
            "embed_dim": defaults["embed_dim"], "audio_rate": audio_rate, "audio_size": np.array(audio_size)}

    # FAD's path: 1.6 s of int16 audio (as moviepy decodes it, / 32768) through the data loader's padding (none
    # needed) and preprocess_audio to AudioCLIP's encode_audio (= its audio network). One loud clip, one quiet.
    # Every frame holds sound: frames of silence reach the network as a constant 1/65535, whose spectrum away from
    # 0 Hz is float32 rounding noise of the filter products, different in every implementation.
    pcm = rng.normal(0, [[8000], [300]], (2, audio_size[1])).clip(-32768, 32767).astype(np.int16)
    clips = np.stack([padded(p[None] / 32768, audio_size) for p in pcm])  # (B, 1, 70560) float64
    data["fad_pcm"] = pcm
    data["fad_embeddings"] = model(preprocess_audio(torch.from_numpy(clips))).numpy()
    base = sys.modules["model.esresnet.base"]
    base.scale, cpu_scale = scale_as_on_cuda, base.scale
    data["fad_embeddings_cuda"] = model(preprocess_audio(torch.from_numpy(clips))).numpy()
    base.scale = cpu_scale

    # A short input (4000 samples, 6 frames), unpadded: the spectrogram picture in dB and the embeddings.
    short = rng.normal(0, 4000, (2, 1, 4000)).clip(-32768, 32767).astype(np.int16)
    x = torch.from_numpy(short / 32768)
    data["short_pcm"] = short[:, 0]
    data["short_db"] = model._forward_pre_processing(x)[:, 0].permute(0, 2, 3, 1).numpy()  # (B, 341, 6, 3)
    data["short_embeddings"] = model(x).numpy()
  print({k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else v for k, v in data.items()
         if not k.endswith("_json")})
  print("embedding std:", data["fad_embeddings"].std(axis=1), data["short_embeddings"].std(axis=1))
  print("relative change of the FAD embeddings under GPU rounding:",
        np.linalg.norm(data["fad_embeddings_cuda"] - data["fad_embeddings"]) / np.linalg.norm(data["fad_embeddings"]))
  np.savez_compressed(args.output, **data)
  print(f"wrote {args.output} ({pathlib.Path(args.output).stat().st_size} bytes)")


if __name__ == "__main__":
  main()
