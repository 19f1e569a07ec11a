"""Figures (synthetic_av) of bouncing-ball streams: generated jointly, rolled on from a real clip's first window
(continuation), video for a real clip's sound, sound for a real clip's video, or real clips themselves as the
reference. Video for sound and sound for video are guided as config.sample.condition_mode and condition_guidance
say (e.g. `--config.sample.condition_mode=independent --config.sample.condition_guidance=1`), which their results
record. Real clips come from data.synthetic with (seed = config.seed + 1, index = stream), so they are never the
clips a model trained on (seed 0).
"""
import time

import numpy as np
from absl import logging

from rflav_jax.data import synthetic
from rflav_jax.eval import synthetic_av
from rflav_jax.flow.progress import log_frames
from rflav_jax.generator import Generator

MODES = ("joint", "continuation", "audio_to_video", "video_to_audio", "real")
FPS = 10


def _real_clip(config, index: int, num_frames: int) -> synthetic.BouncingBallClip:
  clips = synthetic.BouncingBallConfig(resolution=config.model.latent_size, num_frames=num_frames)
  return synthetic.generate_clip(config.seed + 1, index, clips)


def _joined(chunks, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Stream 0's video (T, R, R, 3) and mel (T, 10, N) of a Generator's chunks, logging progress per chunk."""
  video, mel, start = [], [], time.perf_counter()
  for chunk in chunks:
    video.append(chunk.video[0])
    mel.append(chunk.mel[0])
    log_frames(sum(len(v) for v in video), num_frames, 1, time.perf_counter() - start)
  return np.concatenate(video), np.concatenate(mel)


def evaluate(config, mode: str, seconds: float, segment_seconds: float, streams: int = 1) -> list[dict]:
  """Per stream and segment: {"stream", "segment", "label", **synthetic_av figures}."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}")
  num_frames, segment = int(round(seconds * FPS)), int(round(segment_seconds * FPS))
  if num_frames < 3 or not 3 <= segment <= num_frames:
    raise ValueError(f"seconds={seconds} and segment_seconds={segment_seconds}: need a segment of at least 0.3 s "
                     "that fits in the stream")
  generator = None if mode == "real" else Generator.from_config(config)
  conditional = generator is not None and generator.model.num_classes
  label = config.sample.label if conditional else None
  guided = mode in ("audio_to_video", "video_to_audio")
  guidance = {name: config.sample[name] for name in ("condition_mode", "condition_guidance")} if guided else {}
  results, start = [], time.perf_counter()
  for stream in range(streams):
    if mode == "joint":
      chunks = generator.stream([0 if label is None else label], num_frames, seed=config.seed + stream, vocode=False)
      (video, mel), wanted = _joined(chunks, num_frames), label
    else:
      window = 0 if mode == "real" else generator.model.predict_frames
      clip = _real_clip(config, stream, num_frames + window)
      wanted = clip.label
      labels = [clip.label if conditional else 0]  # 0: an unconditional model's null label
      if mode == "real":
        video, mel = clip.video, clip.mel
      elif mode == "continuation":
        chunks = generator.continue_from(clip.video[None, :window], clip.mel[None, :window], labels, num_frames,
                                         seed=config.seed + stream, vocode=False)
        video, mel = _joined(chunks, num_frames)
      elif mode == "audio_to_video":
        video = generator.video_for(clip.mel[None], labels, num_frames, seed=config.seed)[0]
        mel = clip.mel[:num_frames]
      else:
        mel = generator.audio_for(clip.video[None], labels, num_frames, seed=config.seed, vocode=False)[0][0]
        video = clip.video[:num_frames]
    for index, figures in enumerate(synthetic_av.stream_figures(video, mel, segment)):
      results.append({"mode": mode, **guidance, "stream": stream, "segment": index, "label": wanted, **figures})
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
