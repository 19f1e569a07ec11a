"""Official PyTorch checkpoints -> Flax params."""
