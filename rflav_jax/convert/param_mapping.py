"""Moving official (PyTorch-named) tensors into a Flax params tree, checking every name and shape.

A converter lists, for every Flax parameter, which official tensor fills it and how its layout changes
(`Layout`). `fill_params` then checks the whole state dict at once and raises one `ConversionError` naming
every missing tensor, every unexpected tensor and every shape mismatch, so a user fixes a bad checkpoint or
config in one go.
"""
import dataclasses
from typing import Callable, Mapping, Sequence

import flax
import numpy as np

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How an official tensor becomes a Flax parameter.

  forward maps the official array to the Flax array; official_shape maps the Flax shape back to the
  official shape the checkpoint must hold.
  """
  forward: Callable[[np.ndarray], np.ndarray]
  official_shape: Callable[[Shape], Shape]


IDENTITY = Layout(lambda w: w, lambda s: s)
# torch Linear (out, in) -> flax Dense kernel (in, out).
LINEAR = Layout(lambda w: w.T, lambda s: s[::-1])
# torch Conv (out, in, *k) -> flax Conv kernel (*k, in, out).
CONV = Layout(lambda w: np.moveaxis(w, (0, 1), (-1, -2)),
              lambda s: (s[-1], s[-2], *s[:-2]))


def reshaped(shape: Shape) -> Layout:
  """Official tensor of `shape` stored under the Flax parameter's own shape (same element order)."""
  return Layout(lambda w: w, lambda unused_s: tuple(shape))


@dataclasses.dataclass(frozen=True)
class Source:
  """The official tensor (first present of `names`) that fills one Flax parameter."""
  names: Sequence[str]
  layout: Layout = IDENTITY


class ConversionError(ValueError):
  """A state dict that does not match the model it is being loaded into."""


def fill_params(state_dict: Mapping[str, np.ndarray], sources: Mapping[tuple[str, ...], Source],
                target_shapes: Mapping[tuple[str, ...], Shape], what: str, hint: str = "") -> dict:
  """Builds the nested float32 Flax params dict from `state_dict`.

  Args:
    state_dict: official name -> array.
    sources: Flax parameter path -> where it comes from; must cover `target_shapes` exactly.
    target_shapes: Flax parameter path -> shape, e.g. from `jax.eval_shape(model.init, ...)`.
    what: names the checkpoint in error messages.
    hint: appended to the error message (e.g. which config flag to check).
  Raises:
    ConversionError listing all missing, unexpected and mis-shaped tensors.
  """
  assert set(sources) == set(target_shapes), set(sources) ^ set(target_shapes)
  flat, missing, mismatched, used = {}, [], [], set()
  for path, shape in target_shapes.items():
    source = sources[path]
    used.update(source.names)
    name = next((n for n in source.names if n in state_dict), None)
    if name is None:
      missing.append(" or ".join(source.names))
      continue
    array = np.asarray(state_dict[name])
    expected = tuple(source.layout.official_shape(tuple(shape)))
    if array.shape != expected:
      mismatched.append(f"{name}: checkpoint {array.shape}, model expects {expected}")
      continue
    flat[path] = np.asarray(source.layout.forward(array), np.float32).reshape(shape)
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected or mismatched:
    lines = [f"{what} does not match the model."]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
      if items:
        lines.append(f"{len(items)} {title}:")
        lines.extend(f"  {item}" for item in items)
    if hint:
      lines.append(hint)
    raise ConversionError("\n".join(lines))
  return flax.traverse_util.unflatten_dict(flat)


def param_shapes(params) -> dict[tuple[str, ...], Shape]:
  """Flat {path: shape} of a params tree (arrays or ShapeDtypeStructs)."""
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}
