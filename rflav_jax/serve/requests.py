"""What a viewer may ask of a live stream (class label, seed, guidance scale), checked with a message that says what
was wrong and what is allowed: the server answers a bad request with 400 and that message."""
import dataclasses
import math
from typing import Mapping

from rflav_jax.generator import check_label

FIELDS = ("label", "seed", "guidance")
MAX_SEED = 2**31 - 1
MAX_GUIDANCE = 20.0


class BadRequest(ValueError):
  """A parameter of a request is missing its form or its range; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class StreamRequest:
  """A stream's class label (num_classes: the null label, no class), noise seed and classifier-free guidance scale
  (1: none). Viewers asking for equal StreamRequests share one stream."""
  label: int = 0
  seed: int = 0
  guidance: float = 1.0


def parse_request(query: Mapping[str, str], num_classes: int, defaults: StreamRequest = StreamRequest(),
                  allowed: tuple[str, ...] = FIELDS) -> StreamRequest:
  """`defaults` with the fields given in query (strings, e.g. a URL's query), each checked; BadRequest otherwise.

  allowed: the fields that may be given (a running stream may change its label and guidance, not its seed).
  """
  unknown = sorted(set(query) - set(allowed))
  if unknown:
    raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}")
  values = {}
  if "label" in query:
    values["label"] = _int(query, "label")
    try:
      check_label(values["label"], num_classes)
    except ValueError as error:
      raise BadRequest(str(error)) from None
  if "seed" in query:
    values["seed"] = _int(query, "seed")
    if not 0 <= values["seed"] <= MAX_SEED:
      raise BadRequest(f"seed={values['seed']} must be an int in [0, {MAX_SEED}]")
  if "guidance" in query:
    try:
      values["guidance"] = float(query["guidance"])
    except ValueError:
      values["guidance"] = math.nan
    if not num_classes and values["guidance"] != 1.0:
      raise BadRequest(f"guidance={query['guidance']}: the model is unconditional, so it has no classifier-free "
                       "guidance; leave guidance out or set it to 1")
    if not 0.0 <= values["guidance"] <= MAX_GUIDANCE:
      raise BadRequest(f"guidance={query['guidance']} must be a number in [0, {MAX_GUIDANCE:g}] (1: no guidance, "
                       "0: the unconditional model)")
  return dataclasses.replace(defaults, **values)


def _int(query: Mapping[str, str], name: str) -> int:
  try:
    return int(query[name])
  except ValueError:
    raise BadRequest(f"{name}={query[name]!r} must be an int") from None
