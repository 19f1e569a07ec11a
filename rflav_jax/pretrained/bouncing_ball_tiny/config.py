"""Written by launch/convert.py: the flav converted from training in workdir/gpu (configs/train_synthetic_tiny.py:gpu), step 16000 (EMA weights)."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = 'flav'
  config.model = ml_collections.ConfigDict({   'attention_impl': None,
    'audio_columns': 10,
    'block_type': 'c',
    'causal_attn': True,
    'class_dropout_prob': 0.1,
    'depth': 3,
    'dtype': 'float32',
    'hidden_size': 256,
    'in_channels': 3,
    'latent_size': 32,
    'mlp_ratio': 4.0,
    'n_mels': 256,
    'num_classes': 3,
    'num_heads': 4,
    'patch_size': 4,
    'predict_frames': 10,
    'remat': False,
    'remat_policy': 'nothing_saveable'})
  config.checkpoint = 'params'
  return config
