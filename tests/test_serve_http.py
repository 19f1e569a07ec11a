"""The live server end to end: `python -m launch.serve` on the shipped model as a subprocess, watched by a real
browser (headless Chromium), 20 concurrent clients, a stalled client, bad requests, and SIGTERM.

All slow: the server compiles its programs at start (seconds once the persistent compilation cache holds them).
The tests share one server and run in file order; the last one stops it.
"""
import dataclasses
import http.client
import io
import json
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import av
import numpy as np
import pytest

from rflav_jax.data import synthetic, synthetic_analysis

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRACE_S, MAX_STREAMS, VIEWER_BUFFER_S = 2, 3, 2

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Server:
  process: subprocess.Popen
  url: str
  log: pathlib.Path

  @property
  def address(self) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(self.url)
    return parts.hostname, parts.port

  def call(self, method: str, path: str) -> tuple[int, str]:
    """(status, body) of a request."""
    request = urllib.request.Request(self.url + path.lstrip("/"), method=method)
    try:
      with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
      return error.code, error.read().decode()

  def stats(self) -> dict:
    return json.loads(self.call("GET", "/api/stats")[1])

  def rss_mb(self) -> float:
    status = pathlib.Path(f"/proc/{self.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

  def wait_for(self, condition, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
      if value := condition():
        return value
      time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout_s} s; stats: {self.stats()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  log = tmp_path_factory.mktemp("serve") / "server.log"
  with open(log, "w") as stderr:
    process = subprocess.Popen([sys.executable, "-m", "launch.serve", "--port=0", f"--grace_s={GRACE_S}",
                                f"--max_streams={MAX_STREAMS}", f"--viewer_buffer_s={VIEWER_BUFFER_S}"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
  try:
    ready, _, _ = select.select([process.stdout], [], [], 900)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("serving on "):
      pytest.fail(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}")
    yield Server(process, line.split()[-1], log)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def _read_stream(server: Server, query: str, seconds: float, received: list) -> None:
  """Reads /stream.mp4?query progressively for `seconds`, appending each piece to `received`."""
  connection = http.client.HTTPConnection(*server.address, timeout=60)
  connection.request("GET", f"/stream.mp4?{query}")
  response = connection.getresponse()
  assert response.status == 200 and response.getheader("Content-Type") == "video/mp4"
  end = time.monotonic() + seconds
  while time.monotonic() < end and (piece := response.read1(65536)):
    received.append(piece)
  connection.close()


def test_bad_requests_get_400_saying_what_was_wrong(server):
  assert server.call("GET", "/stream.mp4?label=9") == (400, "label=9: the model has classes 0..2 (and 3, the null "
                                                           "label)\n")
  assert server.call("GET", "/stream.mp4?seed=x") == (400, "seed='x' must be an int\n")
  status, body = server.call("POST", "/api/streams?guidance=-1")
  assert status == 400 and "guidance=-1 must be a number in [0, 20]" in body
  assert server.call("GET", "/streams/0123.mp4")[0] == 404
  assert server.call("POST", "/api/streams/0123?label=1")[0] == 404


def test_twenty_clients_share_one_stream_read_progressively_and_free_it_on_leaving(server):
  received = [[] for _ in range(20)]
  clients = [threading.Thread(target=_read_stream, args=(server, "label=1&seed=11", 8.0, r)) for r in received]
  for client in clients:
    client.start()
  stream = server.wait_for(lambda: [s for s in server.stats()["streams"] if s["viewers"] == 20], 60,
                           "20 viewers of one stream")[0]
  assert len(server.stats()["streams"]) == 1 and (stream["label"], stream["seed"], stream["shared"]) == (1, 11, True)
  for client in clients:
    client.join()
  counts = []
  for pieces in received:  # each client's bytes, read as they came: a playable H.264 + AAC stream
    assert len(pieces) >= 3
    with av.open(io.BytesIO(b"".join(pieces))) as container:
      assert {s.type: s.codec_context.name for s in container.streams} == {"video": "h264", "audio": "aac"}
      frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    counts.append(len(frames))
    assert synthetic_analysis.label_from_video(np.stack(frames)) == 1
  print(f"20 clients, one stream, 8 s each: {min(counts)} to {max(counts)} frames per client")
  assert min(counts) >= 20
  server.wait_for(lambda: not server.stats()["streams"], GRACE_S + 10, "the stream ending after the grace period")


def test_more_streams_than_the_maximum_get_503(server):
  opened = [json.loads(server.call("POST", f"/api/streams?seed={seed}")[1])["id"] for seed in range(MAX_STREAMS)]
  status, body = server.call("POST", "/api/streams?seed=99")
  assert status == 503 and f"all {MAX_STREAMS} streams are taken" in body
  assert server.call("GET", "/stream.mp4?seed=99")[0] == 503
  for stream_id in opened:
    assert server.call("DELETE", f"/api/streams/{stream_id}")[0] == 200
  assert server.call("POST", "/api/streams?seed=99")[0] == 200  # a slot is free again


def test_a_stalled_reader_skips_ahead_in_flat_memory(server):
  server.wait_for(lambda: not server.stats()["streams"], GRACE_S + 10, "the streams of earlier tests ending")
  with socket.socket() as stalled:
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(server.address)
    stalled.sendall(b"GET /stream.mp4?label=2&seed=5 HTTP/1.1\r\nHost: test\r\n\r\n")
    assert stalled.recv(1024).startswith(b"HTTP/1.1 200")
    time.sleep(10)  # the socket buffers fill; from here on only the viewer's bounded queue could grow
    rss_before, frames_before = server.rss_mb(), server.stats()["streams"][0]["frames_generated"]
    time.sleep(50)
    stream = server.stats()["streams"][0]
    growth = server.rss_mb() - rss_before
    print(f"stalled for 60 s: RSS grew by {growth:.1f} MB, {stream['frames_generated'] - frames_before} frames made "
          f"meanwhile, {stream['skipped_fragments']} fragments skipped")
    made = (stream["frames_generated"] - frames_before) // server.stats()["chunk_frames"]  # fragments
    assert made >= 20  # the stream went on ...
    assert stream["skipped_fragments"] >= made / 4  # ... past the stalled viewer, once the socket buffers were full
    assert stream["queued_fragments"] <= VIEWER_BUFFER_S * synthetic.FPS / server.stats()["chunk_frames"]
    assert growth < 32  # the allocator steps by up to ~7 MB; the viewer's queue is bounded above


def test_the_page_plays_with_sound_and_switches_class_within_a_second(server, tmp_path):
  sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-test.txt)")
  chromium = shutil.which("chromium")
  if chromium is None:
    pytest.skip("no chromium: apt-get install -y chromium (.ci/run does)")
  with sync_api.sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, args=["--autoplay-policy=no-user-gesture-required"])
    page = browser.new_page()
    page.goto(server.url)
    page.select_option("#label", "0")
    page.click("#start")
    media_time = lambda: page.evaluate("document.getElementById('video').currentTime")
    page.wait_for_function("document.getElementById('video').currentTime > 0", timeout=120_000)
    start_media, start, levels = media_time(), time.monotonic(), []
    while time.monotonic() - start < 10:
      time.sleep(0.5)
      levels.append(page.evaluate("window.live.audioRms()"))
    played = media_time() - start_media
    stream_id = page.evaluate("window.live.stream().id")
    before = _ball(page)
    page.select_option("#label", "2")
    stream = server.wait_for(lambda: (s := json.loads(server.call("GET", f"/api/streams/{stream_id}")[1]))["label"] == 2
                             and s["label_since_frame"] > 0 and s, 10, "the class change")
    switched_at = stream["label_since_frame"] / synthetic.FPS
    page.wait_for_function(f"document.getElementById('video').currentTime >= {switched_at + 1.0}", timeout=60_000)
    page.evaluate("document.getElementById('video').pause()")
    after = _ball(page)
    browser.close()
  print(f"media time advanced {played:.1f} s in 10 s; audio rms {np.median(levels):.3f} (median), "
        f"ball {before} -> {after} one second after the switch at {switched_at:.1f} s")
  assert played >= 5  # real time is 10 s; a loaded machine may fall behind but must keep going
  assert np.mean(np.array(levels) > 0.02) >= 0.5  # the sound is not silent (gaps only while the buffer refills)
  assert before == (0, True) and after == (2, True)


def _ball(page) -> tuple[int, bool]:
  """(class of the colour, whether it is one round ball) of a screenshot of the video element."""
  with av.open(io.BytesIO(page.locator("#video").screenshot())) as png:
    image = next(png.decode(video=0)).to_ndarray(format="rgb24")
  lit = image.max(axis=-1) > 128
  rows, cols = np.nonzero(lit)
  if not len(rows):
    return -1, False
  height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
  area = np.pi / 100  # the share of the frame a ball of radius resolution / 10 covers (synthetic.BallGeometry)
  round_ball = 0.5 * area < lit.mean() < 1.6 * area and 0.7 < height / width < 1.4 and lit.sum() > 0.6 * height * width
  return synthetic_analysis.label_from_video(image[None]), bool(round_ball)


def test_sigterm_ends_every_stream_and_stops_the_server(server):
  received = []
  client = threading.Thread(target=_read_stream, args=(server, "label=0&seed=1", 60.0, received))
  client.start()
  server.wait_for(lambda: received, 60, "the first bytes of a stream")
  server.process.send_signal(signal.SIGTERM)
  assert server.process.wait(timeout=30) == 0
  client.join(timeout=10)
  assert not client.is_alive()  # its response ended with the server
  assert "ended after" in server.log.read_text()
