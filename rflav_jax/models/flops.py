"""Analytic FLOP count of FLAV, for MFU: matmuls and attention only, from the model's attributes.

A matmul of (m, k) by (k, n) costs 2 m n k. Attention over n tokens of width D (summed over heads) costs
2 n^2 D for Q K^T and as much for the weighted sum of values; causal attention is counted as full, as
fused kernels and the published figure do. Elementwise work (norms, GELU, softmax, modulation) is left
out: it is about 0.5% of FLAV-B/1, whose forward pass on a 10-frame window counts 2.73 TFLOP per sample
(the figure the R-FLAV paper publishes). Pure arithmetic on the attributes: nothing is traced or compiled.
"""
from rflav_jax.models.flav import FLAV

# Width of the sinusoidal time embedding fed to TimestepEmbedder (layers.TimestepEmbedder.frequency_dim).
_TIME_FREQUENCIES = 256


def _matmul(m: int, k: int, n: int) -> float:
  return 2.0 * m * k * n


def _attention(tokens: int, width: int, sequences: int) -> float:
  """Projections (qkv, proj) and Q K^T, A V of `sequences` self-attentions over `tokens` tokens each."""
  linear = _matmul(sequences * tokens, width, 4 * width)
  return linear + sequences * 4.0 * tokens ** 2 * width


def forward_flops_breakdown(model: FLAV) -> dict[str, float]:
  """FLOPs per sample of one forward pass on a window of model.predict_frames frames, by part."""
  frames, d, p = model.predict_frames, model.hidden_size, model.patch_size
  patches = (model.latent_size // p) ** 2
  video, audio = frames * patches, frames * model.audio_columns  # tokens per sample
  hidden = int(d * model.mlp_ratio)
  per_block = {
      "video_spatial_attention": _attention(patches, d, frames),
      "video_temporal_attention": _attention(frames, d, patches),
      "audio_attention": _attention(audio, d, 1),
      "video_mlp": 2 * _matmul(video, d, hidden),
      "audio_mlp": 2 * _matmul(audio, d, hidden),
  }
  if model.block_type == "a":
    per_block["joint_attention"] = _attention(video + audio, d, 1)
    modulations = 6 + 3 + 3 + 3 + 3 + 3  # adaLN of attentions, of MLPs, of the joint attention (x d each)
  else:
    modulations = 6 + 3 + 3 + 3 + 2  # adaLN of attentions and MLPs, plus v_avg_proj and a_avg_proj
  per_block["modulation"] = _matmul(frames, d, modulations * d)
  breakdown = {name: model.depth * flops for name, flops in per_block.items()}
  time_embedding = _matmul(frames, _TIME_FREQUENCIES, d) + _matmul(frames, d, d)
  breakdown["embedding"] = (_matmul(video, p * p * model.in_channels, d) + _matmul(audio, model.n_mels, d)
                            + 2 * time_embedding)
  breakdown["final"] = (2 * _matmul(frames, d, 2 * d) + _matmul(video, d, p * p * model.in_channels)
                        + _matmul(audio, d, model.n_mels))
  return breakdown


def forward_flops(model: FLAV) -> float:
  """FLOPs of one forward pass on one window of model.predict_frames frames (2.73e12 for FLAV-B/1).

  A sampler's network call on B windows (streams, twice as many with classifier-free guidance) costs B times this.
  """
  return sum(forward_flops_breakdown(model).values())


def train_step_flops(model: FLAV, batch: int) -> float:
  """FLOPs of one training step on `batch` windows: forward + backward (2x forward), plus a recomputed
  forward with model.remat (the optimiser's elementwise update is left out)."""
  return batch * (4 if model.remat else 3) * forward_flops(model)
