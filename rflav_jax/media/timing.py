"""Frame-rate arithmetic shared by the reader and the writer.

Rates are held as exact fractions so that frame times i / fps never accumulate rounding error.
"""
from fractions import Fraction


def exact_rate(value: float | int | Fraction, name: str) -> Fraction:
  """`value` (frames or samples per second) as an exact positive Fraction; ValueError otherwise."""
  try:
    rate = Fraction(value).limit_denominator(1_000_000)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a positive number, got {value!r}") from e
  if rate <= 0:
    raise ValueError(f"{name} must be a positive number, got {value!r}")
  return rate


def samples_per_frame(fps: float | Fraction, sample_rate: int) -> int:
  """Audio samples per video frame (1600 for 16 kHz at 10 fps); it must be a whole number."""
  spf = exact_rate(sample_rate, "sample_rate") / exact_rate(fps, "fps")
  if spf.denominator != 1:
    raise ValueError(
        f"sample_rate / fps must be a whole number of audio samples per video frame so that frames and "
        f"audio stay aligned; got {sample_rate} / {fps} = {float(spf):.4f}. Choose e.g. fps=10 with "
        f"sample_rate=16000 (1600 samples per frame).")
  return int(spf)
