"""The error of weight files and model folders that cannot be read."""


class CheckpointFormatError(ValueError):
  """A weight file or model folder that cannot be read: truncated, damaged, of an unknown format, or holding more
  than data."""
