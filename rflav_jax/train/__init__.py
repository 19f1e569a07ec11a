"""Training FLAV with the rolling flow loss, data-parallel over every device of every host.

optimizer      AdamW with warm-up and constant / cosine learning rate, gradient clipping
state          TrainState (step, params, EMA params, optimizer state, RNG), its creation and the EMA
step           one update: rolling flow loss, micro-batch accumulation, non-finite guard, EMA
parallel       the device mesh, shardings of state and batch, host batches -> global arrays, multi-process start
input          config.data -> this host's batches from the step on (synthetic set, TFDS datasets, SD-VAE latents)
checkpointing  Orbax CheckpointManager: state + model arguments + config, resume, model/config agreement,
               export of any kept step as a model folder
progress       console lines, metrics.jsonl and TensorBoard of process 0
trainer        train_and_evaluate(config, workdir): the loop that joins them
"""
