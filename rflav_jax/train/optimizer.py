"""The optimiser of config.optim: AdamW (as in the official recipe) with warm-up, a constant or cosine schedule, clipping.

config.optim fields: lr (peak learning rate), schedule ("constant" or "cosine"), warmup_steps (linear from 0),
decay_steps (cosine: steps from the end of warm-up to the floor; 0 means until train.num_steps),
min_lr_ratio (cosine floor / lr), b1, b2, eps, weight_decay, grad_clip (global norm; 0 disables).
"""
import optax

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
  """Learning rate as a function of the update count."""
  if optim_config.schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={optim_config.schedule!r}: expected one of {SCHEDULES}")
  warmup = optim_config.warmup_steps
  if optim_config.schedule == "constant":
    after = optax.constant_schedule(optim_config.lr)
  else:
    decay_steps = optim_config.decay_steps or max(num_steps - warmup, 1)
    after = optax.cosine_decay_schedule(optim_config.lr, decay_steps, alpha=optim_config.min_lr_ratio)
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, optim_config.lr, warmup), after], [warmup])


def make_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
  """Clip by global norm (when grad_clip > 0), then AdamW with the schedule."""
  schedule = learning_rate_schedule(optim_config, num_steps)
  adamw = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                      weight_decay=optim_config.weight_decay)
  if optim_config.grad_clip <= 0:
    return adamw
  return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adamw)
