"""Figures (synthetic_av) of bouncing-ball streams: generated jointly, rolled on from a real clip's first window
(continuation), video for a real clip's sound, sound for a real clip's video, or real clips themselves as the
reference. Real clips come from data.synthetic with (seed = config.seed + 1, index = stream), so they are never
the clips a model trained on (seed 0).
"""
import time

import numpy as np
from absl import logging

from rflav_jax.build import build_flav
from rflav_jax.data import synthetic
from rflav_jax.eval import generate, synthetic_av

MODES = ("joint", "continuation", "audio_to_video", "video_to_audio", "real")
FPS = 10


def _real_clip(config, index: int, num_frames: int) -> synthetic.BouncingBallClip:
  clips = synthetic.BouncingBallConfig(resolution=config.model.latent_size, num_frames=num_frames)
  return synthetic.generate_clip(config.seed + 1, index, clips)


def evaluate(config, mode: str, seconds: float, segment_seconds: float, streams: int = 1) -> list[dict]:
  """Per stream and segment: {"stream", "segment", "label", **synthetic_av figures}."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}")
  num_frames, segment = int(round(seconds * FPS)), int(round(segment_seconds * FPS))
  if num_frames < 3 or not 3 <= segment <= num_frames:
    raise ValueError(f"seconds={seconds} and segment_seconds={segment_seconds}: need a segment of at least 0.3 s "
                     "that fits in the stream")
  opts = config.sample
  model, params = (None, None) if mode == "real" else build_flav(config.model, config.checkpoint, config.seed)
  label = opts.label if model is not None and model.num_classes else None
  common = dict(guidance_scale=opts.guidance_scale, steps_per_frame=opts.steps_per_frame,
                stochasticity=opts.stochasticity, seed=config.seed, audio_scale=config.audio_scale)
  results, start = [], time.perf_counter()
  for stream in range(streams):
    if mode == "joint":
      video, mel = generate.joint(model, params, num_frames, label=label, **{**common, "seed": config.seed + stream})
      video, mel, wanted = video[0], mel[0], label
    else:
      window = 0 if mode == "real" else model.predict_frames
      clip = _real_clip(config, stream, num_frames + window)
      wanted = clip.label
      clip_label = clip.label if label is not None else None
      if mode == "real":
        video, mel = clip.video, clip.mel
      elif mode == "continuation":
        video, mel = generate.continuation(model, params, clip.video[:window], clip.mel[:window], num_frames,
                                           label=clip_label, **{**common, "seed": config.seed + stream})
      elif mode == "audio_to_video":
        video = generate.video_for_audio(model, params, clip.mel, label=clip_label,
                                         condition_guidance=opts.condition_guidance, **common)
        mel = clip.mel[:num_frames]
      else:
        mel = generate.audio_for_video(model, params, clip.video, label=clip_label,
                                       condition_guidance=opts.condition_guidance, **common)
        video = clip.video[:num_frames]
    for index, figures in enumerate(synthetic_av.stream_figures(video, mel, segment)):
      results.append({"mode": mode, "stream": stream, "segment": index, "label": wanted, **figures})
    elapsed = time.perf_counter() - start
    logging.info("%s: stream %d/%d measured, %.1f s so far, ETA %.0f s", mode, stream + 1, streams, elapsed,
                 elapsed / (stream + 1) * (streams - stream - 1))
  return results


def summary(results: list[dict]) -> dict:
  """Mean of each figure over the results (labels: share matching the wanted label)."""
  out = {name: float(np.nanmean([r[name] for r in results])) for name in synthetic_av.FIGURES
         if name not in ("video_label", "audio_label")}
  with_label = [r for r in results if r["label"] is not None]
  if with_label:
    out["video_label_ok"] = float(np.mean([r["video_label"] == r["label"] for r in with_label]))
    out["audio_label_ok"] = float(np.mean([r["audio_label"] == r["label"] for r in with_label]))
  return out
