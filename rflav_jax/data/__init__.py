"""Audio-video training data.

avfolder            TFDS dataset built from a folder of mp4 files (train/, test/, optional class folders)
synthetic           the bouncing-ball procedural set: clips generated from (seed, index), in-memory arrays
synthetic_analysis  reads height, pitch, clicks and class back from any bouncing-ball video / mel
synthetic_tfds      the bouncing-ball set as a TFDS dataset
pipeline            a TFDS dataset, in-memory arrays or cached latents -> this host's shuffled numpy batches
latents             every clip of a dataset encoded once by the SD-VAE, in ArrayRecord shards

Modules are imported one by one (e.g. `from rflav_jax.data import synthetic`) so that the in-memory set
does not pull in TensorFlow.
"""
