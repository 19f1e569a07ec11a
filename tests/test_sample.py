"""End-to-end sampling to mp4: frame and audio counts, wiring of labels, guidance, conditioning and codecs (on a
random model whose final layers are not zero, so it predicts non-zero velocities), inputs refused before any
compute, progress, device choice."""
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from helpers import media_file, write_video_only
from configs import flav_b1_aist, synthetic_tiny
from rflav_jax import generator, sample, standins
from rflav_jax.build import build_flav
from rflav_jax.flow.progress import CallProgress
from rflav_jax.generator import Chunk, Generator
from rflav_jax.media import write_wav
from rflav_jax.media.align import FrameAligner
from rflav_jax.media.reader import read_audio, read_clip, read_video
from rflav_jax.models.flav import flav_from_config, flav_from_preset
from rflav_jax.models.flops import forward_flops


def tiny_config(**model):
  config = synthetic_tiny.get_config()
  config.checkpoint = ""  # a fresh model of the sizes below
  config.model.update({**dict(latent_size=16, patch_size=4, hidden_size=32, depth=1, num_heads=2, predict_frames=4),
                       **model})
  config.sample.update(num_frames=7, chunk_frames=3)
  return config


def random_model(config):
  """The config's model with every weight drawn from N(0, 0.2): no zero-initialised layer hides a path."""
  model, params = build_flav(config.model)
  rng = np.random.default_rng(1)
  return model, jax.tree.map(lambda x: rng.normal(0.0, 0.2, x.shape).astype(np.float32), params)


def sample_with(model_and_params, config, output_dir):
  """sample.sample_with on the Generator of config with the given model and weights."""
  return sample.sample_with(Generator.from_config(config, *model_and_params), config, output_dir)


def check_mp4(path, frames):
  assert read_video(path).shape[0] == frames
  assert abs(len(read_audio(path)) - frames * 1600) <= 1600


def read_png(path):
  with av.open(str(path)) as container:
    return next(container.decode(video=0)).to_ndarray(format="rgb24")


def video_difference(path_a, path_b):
  return np.abs(read_video(path_a).astype(float) - read_video(path_b).astype(float)).mean()


@pytest.mark.slow
def test_griffin_lim_stream_writes_every_frame_with_progress_and_bounded_previews(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  config = tiny_config()
  config.sample.num_frames = 10  # more than the previews keep: 2 W = 8 frames
  paths = sample.sample(config, tmp_path)
  assert [p.name for p in paths] == ["stream_0.mp4"]
  check_mp4(paths[0], 10)
  assert read_png(tmp_path / "stream_0_frames.png").shape == (2 * 16, 4 * 16, 3)  # 8 frames, 4 per row
  assert read_png(tmp_path / "stream_0_mel.png").shape == (256, 8 * 10, 3)  # 8 frames of 10 mel columns
  # Pre-roll 4 x 2 calls, then 4 chunks of 3 frames x 2 calls; every call is logged with the first and last.
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("network call 1/32 done after") for m in messages)
  assert any(m.startswith("network call 8/32, pre-roll done in") for m in messages)
  assert any(m.startswith("network call 32/32,") and "ETA" in m for m in messages)
  assert any(m.startswith("frame 10/10 of 1 stream(s),") and m.endswith("ETA 0.0 s") for m in messages)
  # The stage times that say what limits the speed: each stage's share, and the stages add up to the whole.
  stages = next(m for m in messages if m.startswith("stages: "))
  seconds = dict((name, float(s)) for name, s in re.findall(r"(\w[\w ()]*?) ([\d.]+) s \(", stages))
  assert set(seconds) == {"network (compilation included)", "video decoding", "mp4 writing", "vocoder"}
  total = float(re.search(r"([\d.]+) s in all", stages).group(1))
  assert min(seconds.values()) >= 0 and abs(sum(seconds.values()) - total) < 0.2


@pytest.mark.slow
def test_hifigan_stream_keeps_audio_and_video_aligned(tmp_path):
  folder = standins.write_vocoder(tmp_path / "vocoder", {**standins.HIFIGAN_V1_256_MELS, "num_mels": 16,
                                                         "upsample_initial_channel": 16, "resblock_kernel_sizes": [3],
                                                         "resblock_dilation_sizes": [[1, 3]]})
  config = tiny_config(n_mels=16, num_classes=0)
  config.sample.num_streams = 2
  config.vocoder.update(kind="hifigan", checkpoint=str(folder))
  paths = sample.sample(config, tmp_path / "out")
  for path in paths:
    check_mp4(path, 7)


@pytest.mark.slow
def test_labels_and_guidance_reach_the_network(tmp_path):
  config = tiny_config()
  config.sample.num_frames = 4
  model, params = random_model(config)
  runs = {"label0": dict(label=0), "label1": dict(label=1), "guided": dict(label=0, guidance_scale=3.0),
          "plain_euler": dict(guidance_scale=1.0, stochasticity=0.0)}
  for name, options in runs.items():
    config.sample.update(options)
    sample_with((model, params), config, tmp_path / name)
  assert video_difference(tmp_path / "label0/stream_0.mp4", tmp_path / "label1/stream_0.mp4") > 1
  assert video_difference(tmp_path / "label0/stream_0.mp4", tmp_path / "guided/stream_0.mp4") > 1
  assert video_difference(tmp_path / "label0/stream_0.mp4", tmp_path / "plain_euler/stream_0.mp4") > 1


@pytest.mark.slow
def test_sdvae_codec_decodes_the_latents(tmp_path):
  config = tiny_config(latent_size=8, in_channels=4)
  config.codec.update(kind="sdvae", checkpoint=str(standins.write_sdvae(
      tmp_path / "vae", {"block_out_channels": [8, 8], "norm_num_groups": 4, "latent_channels": 4})))
  config.sample.num_frames = 3
  path, = sample_with(random_model(config), config, tmp_path / "out")
  assert read_video(path).shape == (3, 16, 16, 3)  # 8x8 latents decoded to 16x16 frames


@pytest.mark.slow
@pytest.mark.parametrize("given", ["audio", "video"])
def test_conditional_generation_keeps_the_given_modality_and_follows_it(tmp_path, given):
  config = tiny_config()
  config.sample.update(condition=given, num_frames=6, condition_guidance=0.5)
  model_and_params = random_model(config)
  paths = {}
  for name in ("landscape_video0.mp4", "landscape_video1.mp4"):
    config.sample.condition_file = str(media_file(name))
    paths[name], = sample_with(model_and_params, config, tmp_path / name)
    check_mp4(paths[name], 6)
  original, written = read_clip(media_file("landscape_video0.mp4"), resolution=16), read_clip(paths["landscape_video0.mp4"])
  one, other = (read_clip(p) for p in paths.values())
  if given == "audio":  # the soundtrack is the given one (through AAC: compare loudness envelopes)
    envelope = lambda x: np.abs(x[:6 * 1600]).reshape(6, -1).mean(axis=1)
    assert np.corrcoef(envelope(original.audio), envelope(written.audio))[0, 1] > 0.9
    assert np.abs(one.video.astype(float) - other.video.astype(float)).mean() > 1  # the video follows the audio
  else:  # the picture is the given one (through H.264)
    assert np.abs(original.video[:6].astype(float) - written.video.astype(float)).mean() < 8
    assert np.abs(one.audio - other.audio).mean() > 0.01 * np.abs(one.audio).mean()  # the audio follows the video


@pytest.mark.slow
def test_bad_inputs_are_refused_before_any_compute(tmp_path, monkeypatch):
  def no_compute(*args, **kwargs):
    raise AssertionError("the model was built before the inputs were checked")

  monkeypatch.setattr(generator, "build", no_compute)
  monkeypatch.setattr(generator, "build_video_codec", no_compute)
  write_video_only(tmp_path / "silent.mp4")
  write_wav(tmp_path / "sound.wav", np.zeros(16000, np.float32), 16000)
  bad = [(dict(num_frames=0), "config.sample.num_frames=0 must be a positive int"),
         (dict(num_frames=-3), "config.sample.num_frames=-3"),
         (dict(num_streams=0), "config.sample.num_streams=0"),
         (dict(chunk_frames=0), "config.sample.chunk_frames=0"),
         (dict(stochasticity=1.5), r"config.sample.stochasticity=1.5: expected .* in \[0, 1\]"),
         (dict(condition="audio"), "set it to a media file"),
         (dict(condition="audio", condition_file=str(tmp_path / "silent.mp4")), "silent.mp4 has no audio track"),
         (dict(condition="video", condition_file=str(tmp_path / "sound.wav")), "sound.wav has no video stream"),
         (dict(condition="video", condition_file=str(tmp_path / "none.mp4")), "none.mp4.*does not exist"),
         (dict(condition="video", condition_file=str(media_file("landscape_video0.mp4")), num_frames=17),
          "has 16 frames of video at 10 fps; set config.sample.num_frames <= 16")]
  for options, message in bad:
    config = tiny_config()
    config.sample.update(options)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      sample.sample(config, tmp_path / "out")
  monkeypatch.undo()
  for label in (5, -1):  # classes 0..3, null label 4
    config = tiny_config(num_classes=4)
    config.sample.label = label
    with pytest.raises(ValueError, match=f"config.sample.label={label}: the model has classes 0..3"):
      sample_with(random_model(config), config, tmp_path / "out")
  config = tiny_config()
  config.checkpoint = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing does not exist; pass a folder written by launch.convert"):
    sample.sample(config, tmp_path / "out")
  config.checkpoint = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="holds no model.json"):
    sample.sample(config, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_streams_use_the_devices_they_divide_evenly_over():
  devices = ["d0", "d1", "d2", "d3"]
  assert [len(generator.stream_devices(n, devices)) for n in (1, 2, 3, 4, 6, 8)] == [1, 2, 3, 4, 3, 4]


def test_a_cpu_run_of_the_released_size_is_announced():
  b1 = forward_flops(flav_from_preset("FLAV-B/1", num_classes=10, causal_attn=True))  # 2.73 TFLOP per call
  # The README's CPU command (1 stream, 3 frames: 26 calls) at 0.1 TFLOP/s: 26 x 2.73 / 0.1 s = 11.8 min
  assert ("26 network calls of about 2.7 TFLOP each; at the 0.100 TFLOP/s this CPU gives now the run takes about "
          "12 min" in sample.cpu_warning(b1, 26, 0.1e12, dtype=jnp.float32))
  assert ("--config.model.dtype=float32 is no slower than bfloat16"
          in sample.cpu_warning(b1, 26, 0.1e12, dtype=jnp.bfloat16))
  assert "dtype" not in sample.cpu_warning(b1, 26, 0.1e12, dtype=jnp.float32)  # already float32
  tiny = forward_flops(flav_from_config(tiny_config().model))
  assert sample.cpu_warning(4 * tiny, 1000, 0.1e12, dtype=jnp.float32) is None
  rate = sample.cpu_flop_rate(jnp.float32, seconds=0.05)  # the probe: a share of one MLP product's rate
  assert 1e9 < rate < 1e14


def test_progress_counts_one_call_per_device_set():
  progress = CallProgress()
  progress.begin(total=3, preroll=1, devices=2)
  for _ in range(5):
    progress.tick()
  assert progress.calls == 2


def test_aligner_hands_out_whole_frames_with_their_audio():
  aligner = FrameAligner(batch=2, samples_per_frame=4)
  aligner.push_video(np.arange(2 * 3).reshape(2, 3, 1, 1, 1).repeat(3, axis=-1).astype(np.uint8))
  aligner.push_audio(np.ones((2, 6), np.float32))
  video, audio = aligner.pop()
  assert video.shape == (2, 1, 1, 1, 3) and audio.shape == (2, 4)
  aligner.push_audio(np.ones((2, 20), np.float32))
  video, audio = aligner.pop()
  assert video[:, :, 0, 0, 0].tolist() == [[1, 2], [4, 5]] and audio.shape == (2, 8)
  assert aligner.pop()[0].shape[1] == 0  # 10 samples wait for the next frame


@pytest.mark.slow
def test_readme_demo_command_runs_with_one_stream_on_two_devices(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  result = subprocess.run([sys.executable, "-m", "launch.sample", "--config=configs/synthetic_tiny.py",
                           f"--output_dir={tmp_path}", "--config.sample.num_frames=3"],
                          capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1], env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "on 1 of 2 cpu devices" in result.stderr
  check_mp4(tmp_path / "stream_0.mp4", 3)


def test_unset_streams_and_chunks_are_fitted_to_the_machine(monkeypatch):
  config = flav_b1_aist.get_config()
  for backend, streams in (("cpu", 1), ("gpu", 4), ("tpu", 4)):
    fitted = generator.fit_to_machine(config.sample, backend)
    assert (fitted.num_streams, fitted.chunk_frames) == (streams, 20)
  config.sample.num_frames = 3
  assert generator.fit_to_machine(config.sample, "cpu").chunk_frames == 3  # no frame computed to be dropped
  assert config.sample.num_streams is None and config.sample.chunk_frames is None  # the config is left as it is
  # Set on the command line (whose overrides config_flags reads from sys.argv as it defines the flag): kept.
  argv = ["sample", "--config.sample.num_streams=4", "--config.sample.chunk_frames=20", "--config.sample.num_frames=3"]
  monkeypatch.setattr(sys, "argv", argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flav_b1_aist.__file__, flag_values=flag_values)
  flag_values(argv)
  fitted = generator.fit_to_machine(flag_values.config.sample, "cpu")
  assert (fitted.num_streams, fitted.chunk_frames) == (4, 20)
  assert synthetic_tiny.get_config().sample == generator.fit_to_machine(synthetic_tiny.get_config().sample, "cpu")


def stream_that_stops(chunks: list[int], error: BaseException):
  """A Generator.stream that yields chunks of the given frame counts (grey frames, silence), then raises error."""
  def stream(self, labels, num_frames, *, seed, clock):
    del num_frames, seed, clock
    size = self.model.latent_size
    for n in chunks:
      yield Chunk(np.full((len(labels), n, size, size, 3), 128, np.uint8),
                  np.zeros((len(labels), n, 10, self.model.n_mels), np.float32),
                  np.zeros((len(labels), n * 1600), np.float32))
    raise error
  return stream


def test_a_stopped_run_leaves_whole_files_only(tmp_path, monkeypatch, caplog):
  config = synthetic_tiny.get_config()  # the shipped model: read, not initialised
  config.sample.update(num_streams=2, num_frames=20)
  shipped = Generator.from_config(config)
  monkeypatch.setattr(Generator, "stream", stream_that_stops([], KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    sample.sample_with(shipped, config, tmp_path / "new" / "out")
  assert not (tmp_path / "new").exists()  # both folders the run made, left empty: removed
  assert f"removed {tmp_path / 'new' / 'out' / 'stream_0.mp4'}, {tmp_path / 'new' / 'out' / 'stream_1.mp4'}, " \
         "which held no whole chunk" in caplog.text
  assert f"removed {tmp_path / 'new'}, which this run created and left empty" in caplog.text

  monkeypatch.setattr(Generator, "stream", stream_that_stops([3, 3], RuntimeError("the network failed")))
  (tmp_path / "mine").mkdir()
  with pytest.raises(RuntimeError, match="the network failed"):
    sample.sample_with(shipped, config, tmp_path / "mine")
  for b in range(2):
    check_mp4(tmp_path / "mine" / f"stream_{b}.mp4", 6)  # two whole chunks, finished as a valid mp4
  assert f"finished {tmp_path / 'mine' / 'stream_0.mp4'} (6 of 20 frames)" in caplog.text

  write = sample.Mp4Writer.write
  def fail_on_the_second_chunk_of_stream_1(writer, frames, wav):
    if writer.path.endswith("stream_1.mp4") and writer._frames_written:
      write(writer, frames[:1], wav[:1600])  # a chunk written in part
      raise OSError("No space left on device")
    write(writer, frames, wav)
  monkeypatch.setattr(sample.Mp4Writer, "write", fail_on_the_second_chunk_of_stream_1)
  monkeypatch.setattr(Generator, "stream", stream_that_stops([3, 3, 3], RuntimeError("not reached")))
  with pytest.raises(OSError, match="No space left"):
    sample.sample_with(shipped, config, tmp_path / "full")
  check_mp4(tmp_path / "full" / "stream_0.mp4", 6)
  assert not (tmp_path / "full" / "stream_1.mp4").exists()  # its second chunk is not whole
  assert list((tmp_path / "mine").iterdir()) and (tmp_path / "mine").is_dir()


def run_until(args: list[str], line: str, tmp_path) -> subprocess.Popen:
  """launch.sample started with args, once its log has printed a line containing `line`."""
  process = subprocess.Popen([sys.executable, "-m", "launch.sample", *args], cwd=pathlib.Path(__file__).parents[1],
                             stderr=subprocess.PIPE, text=True)
  log = []
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline:
    log.append(process.stderr.readline())
    if line in log[-1] or process.poll() is not None:
      break
  process.log = log
  return process


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_finishes_its_stream_with_whole_chunks_or_removes_it(tmp_path, signum):
  out = tmp_path / "a" / "b"
  args = ["--config=configs/synthetic_tiny.py", "--config.sample.num_frames=3000", "--config.sample.chunk_frames=5",
          f"--output_dir={out}"]
  # SIGTERM once a chunk is written; SIGINT as soon as the sampling begins, most likely before the first chunk
  process = run_until(args, "frame 5/3000" if signum == signal.SIGTERM else "sampling 1 stream(s)", tmp_path)
  process.send_signal(signum)
  log = "".join(process.log) + process.communicate(timeout=600)[1]
  assert process.returncode != 0 and f"{signal.Signals(signum).name} received: stopping" in log, log[-3000:]
  finished = re.search(r"finished \S+stream_0.mp4 \((\d+) of 3000 frames\), whole chunks", log)
  if finished:
    frames = int(finished.group(1))
    assert frames % 5 == 0 and frames >= (5 if signum == signal.SIGTERM else 0)
    check_mp4(out / "stream_0.mp4", frames)
  else:  # stopped before the first chunk (or before the file was opened): nothing left
    assert not (tmp_path / "a").exists()
    assert f"removed {tmp_path / 'a'}, which this run created and left empty" in log
