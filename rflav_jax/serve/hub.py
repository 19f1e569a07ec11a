"""The live streams of one Generator for many viewers: shared, bounded, and made by a pipeline of threads.

  sampler thread   rolls every running stream in one batched network call per chunk (`BatchSampler`), keeping each
                   stream at most lead_s ahead of its real-time clock, and hands each stream its chunk;
  starter thread   pre-rolls new streams and compiles the programs of new batch sizes while the sampler rolls on;
  a thread per     decodes, vocodes and encodes its chunks into fragmented MP4 (`FragmentEncoder`) and passes the
  stream           fragments to the event loop.

JAX, the FFTs and the encoders release the GIL, so the stages overlap. The asyncio event loop owns the viewers: a
viewer holds at most viewer_buffer_s of fragments and skips the oldest when it falls further behind, so a stalled
connection holds a bounded amount of memory. A stream without viewers ends after grace_s. A stream's class and
guidance change at the next chunk boundary; streams join and leave the batch there, once the program of the new
batch size is compiled (until then a new stream waits and a left stream's slot keeps rolling).

The model follows its window more than its label: on the shipped model a class switched at guidance 1 never shows
(the frames in the window keep the ball's colour), at guidance 2 after about 10 frames, at 4 after 3. So a stream
runs at guidance switch_guidance (at least) for one window after its class changes.
"""
import asyncio
import collections
import queue
import secrets
import threading
import time

from absl import logging

from rflav_jax.generator import FPS, SAMPLE_RATE, Generator
from rflav_jax.serve.batch import BatchSampler, StreamState
from rflav_jax.serve.fragments import FragmentEncoder
from rflav_jax.serve.requests import StreamRequest


class HubFull(Exception):
  """Every stream slot is taken (the server answers 503 with the message)."""


class Viewer:
  """One connection's fragments, at most max_fragments of them: when full, the oldest is dropped (it skips ahead)."""

  def __init__(self, max_fragments: int):
    self._fragments = collections.deque(maxlen=max_fragments)
    self._arrived = asyncio.Event()
    self.skipped = 0
    self.ended = False

  def push(self, fragment: bytes) -> None:
    if len(self._fragments) == self._fragments.maxlen:
      self.skipped += 1
    self._fragments.append(fragment)
    self._arrived.set()

  def end(self) -> None:
    self.ended = True
    self._arrived.set()

  def __len__(self) -> int:
    """Fragments waiting to be sent."""
    return len(self._fragments)

  async def next(self) -> bytes | None:
    """The next fragment; None once the stream has ended."""
    while not self._fragments:
      if self.ended:
        return None
      self._arrived.clear()
      await self._arrived.wait()
    return self._fragments.popleft()


class LiveStream:
  """One generated stream: what was asked of it, its state in the batch, its fragments and its viewers.

  label and guidance are what the stream was last asked for; the sampler applies them at the next chunk and
  records the first frame made with the current label in label_since_frame.
  """

  def __init__(self, stream_id: str, request: StreamRequest, shared: bool):
    self.id, self.seed, self.shared = stream_id, request.seed, shared
    self.label, self.guidance = request.label, request.guidance
    self.state: StreamState | None = None  # set once pre-rolled
    self.ended = False
    self.chunks = queue.Queue(maxsize=2)  # sampler thread -> this stream's thread: (video, mel) of one chunk
    self.viewers: set[Viewer] = set()
    self.init: bytes | None = None  # the fMP4 init segment
    self.codecs: str | None = None  # its codecs, as a MIME type's codecs parameter
    self.last_fragment: bytes | None = None
    self.idle_timer: asyncio.TimerHandle | None = None
    self.opened_at = time.perf_counter()
    self.first_fragment_s: float | None = None  # from open to the first fragment
    self.clock_start: float | None = None  # when its first chunk was made: its real-time clock starts there
    self.label_since_frame = 0
    self.switch_until = 0  # the frame up to which it runs at switch guidance after a class change
    self.frames_sent = 0
    self.network_s = self.post_s = 0.0  # busy seconds of its batch's network calls and of its own thread

  @property
  def request(self) -> StreamRequest:
    return StreamRequest(self.label, self.seed, self.guidance)

  def ahead_s(self, now: float) -> float:
    """How far its generated frames run ahead of its real-time clock, in seconds."""
    if self.clock_start is None:
      return float("-inf")
    return self.state.frames / FPS - (now - self.clock_start)

  def stats(self, now: float) -> dict:
    frames = self.state.frames if self.state else 0
    media_s = frames / FPS
    return {
        "id": self.id, "label": self.label, "seed": self.seed, "guidance": self.guidance, "shared": self.shared,
        "running": self.state is not None, "viewers": len(self.viewers), "frames_generated": frames,
        "frames_sent": self.frames_sent, "label_since_frame": self.label_since_frame,
        "buffer_s": max(self.ahead_s(now), 0.0) if self.clock_start else 0.0,
        "network_rtf": media_s / self.network_s if self.network_s else None,
        "post_rtf": self.frames_sent / FPS / self.post_s if self.post_s else None,
        "first_fragment_s": self.first_fragment_s, "skipped_fragments": sum(v.skipped for v in self.viewers),
        "queued_fragments": max((len(v) for v in self.viewers), default=0),  # of its most behind viewer
    }


class StreamHub:
  """Live streams of `generator` (see the module docstring); `start` it inside the event loop that serves them.

  Args:
    chunk_frames: frames per batched network call (and per fMP4 fragment).
    max_streams: the most streams at once; `open` raises HubFull beyond it.
    lead_s: how far a stream may run ahead of real time (math.inf: as fast as it goes, for benchmarks).
    grace_s: how long a stream without viewers lives on.
    viewer_buffer_s: the most stream time a viewer holds before it skips ahead.
    switch_guidance: the least guidance scale of a stream for one window after its class changes.
  """

  def __init__(self, generator: Generator, *, chunk_frames: int = 5, max_streams: int = 4, lead_s: float = 1.0,
               grace_s: float = 10.0, viewer_buffer_s: float = 5.0, switch_guidance: float = 4.0):
    for name, value in (("max_streams", max_streams), ("lead_s", lead_s), ("viewer_buffer_s", viewer_buffer_s)):
      if not value > 0:
        raise ValueError(f"{name}={value} must be positive")
    if grace_s < 0:
      raise ValueError(f"grace_s={grace_s} must be >= 0")
    self.generator, self.batch = generator, BatchSampler(generator, chunk_frames)
    self.chunk_frames, self.max_streams, self.lead_s, self.grace_s = chunk_frames, max_streams, lead_s, grace_s
    self.switch_guidance = switch_guidance
    self._viewer_fragments = max(2, round(viewer_buffer_s * FPS / chunk_frames))
    self._streams: dict[str, LiveStream] = {}  # open streams by id
    self._shared: dict[StreamRequest, LiveStream] = {}
    self._running: list[LiveStream] = []  # the batch (the sampler thread's)
    self._joining: list[LiveStream] = []  # pre-rolled, waiting for the next chunk boundary
    self._changed = threading.Condition()  # guards the four above; notified whenever the sampler may act
    self._tasks = queue.Queue()  # the starter's work: a LiveStream to pre-roll, or a program to compile
    self._warming: set[tuple[int, bool]] = set()
    self._stop = threading.Event()
    self._threads: list[threading.Thread] = []
    self._loop: asyncio.AbstractEventLoop | None = None

  # --------------------------------------------------------------------------------------------------
  # Life cycle (event loop thread).

  def warm_up(self) -> None:
    """Compiles the pre-roll, the one-stream programs (plain and guided) and the video decoding, so that the first
    viewer waits for generation only; the persistent compilation cache makes this quick from the second run on."""
    for guided in (False, True)[:2 if self.generator.model.num_classes else 1]:
      frames = self.batch.warm((1, guided))
    for _ in self.generator.decode([frames], 1):
      pass

  def start(self, loop: asyncio.AbstractEventLoop) -> None:
    """Starts the sampler and starter threads; fragments reach viewers through `loop`."""
    self._loop = loop
    for target in (self._sample, self._start_streams):
      self._threads.append(threading.Thread(target=target, name=target.__name__.strip("_"), daemon=True))
      self._threads[-1].start()

  def close(self, timeout_s: float = 30.0) -> None:
    """Ends every stream and viewer and stops the threads."""
    for stream in list(self._streams.values()):
      self.end(stream)
    self._stop.set()
    with self._changed:
      self._changed.notify_all()
    self._tasks.put(None)
    for thread in self._threads:
      thread.join(timeout_s)

  # --------------------------------------------------------------------------------------------------
  # Streams and viewers (event loop thread).

  def open(self, request: StreamRequest, shared: bool) -> LiveStream:
    """The running stream of `request` when shared and there is one, else a new stream (HubFull when every slot
    is taken). A new stream ends after grace_s unless a viewer comes."""
    if shared and request in self._shared:
      return self._shared[request]
    if len(self._streams) >= self.max_streams:
      raise HubFull(f"all {self.max_streams} streams are taken; try again later, or watch a running stream (the same "
                    "label, seed and guidance share one)")
    stream = LiveStream(secrets.token_hex(8), request, shared)
    with self._changed:
      self._streams[stream.id] = stream
      if shared:
        self._shared[request] = stream
    threading.Thread(target=self._post, args=(stream,), name=f"stream-{stream.id}", daemon=True).start()
    self._tasks.put(stream)
    self._unwatched(stream)
    logging.info("stream %s opened: %s%s", stream.id, request, " (shared)" if shared else "")
    return stream

  def find(self, stream_id: str) -> LiveStream:
    """The open stream of that id; KeyError if there is none."""
    return self._streams[stream_id]

  def change(self, stream: LiveStream, request: StreamRequest) -> None:
    """Asks a stream for another label and guidance, from the next chunk on; shared streams keep theirs."""
    if stream.shared:
      raise ValueError("a shared stream keeps its label and guidance (its viewers asked for them); open a stream of "
                       "your own with POST /api/streams to change them")
    with self._changed:
      stream.label, stream.guidance = request.label, request.guidance

  def watch(self, stream: LiveStream) -> Viewer:
    """A new viewer of the stream; it gets the last fragment at once, then every new one."""
    viewer = Viewer(self._viewer_fragments)
    stream.viewers.add(viewer)
    if stream.idle_timer is not None:
      stream.idle_timer.cancel()
      stream.idle_timer = None
    if stream.last_fragment is not None:
      viewer.push(stream.last_fragment)
    if stream.ended:
      viewer.end()
    return viewer

  def unwatch(self, stream: LiveStream, viewer: Viewer) -> None:
    stream.viewers.discard(viewer)
    if not stream.viewers:
      self._unwatched(stream)

  def end(self, stream: LiveStream) -> None:
    """Ends a stream now: its viewers' responses end, and its batch slot is freed at the next chunk boundary."""
    with self._changed:
      stream.ended = True
      self._streams.pop(stream.id, None)
      if self._shared.get(stream.request) is stream:
        del self._shared[stream.request]
      self._changed.notify_all()
    for viewer in stream.viewers:
      viewer.end()
    logging.info("stream %s ended after %d frames", stream.id, stream.state.frames if stream.state else 0)

  @property
  def compiling(self) -> bool:
    """Whether the starter is compiling a program (which slows every stream on a CPU meanwhile)."""
    return bool(self._warming)

  def stats(self) -> dict:
    now = time.perf_counter()
    streams = [stream.stats(now) for stream in list(self._streams.values())]
    return {"streams": streams, "max_streams": self.max_streams, "batch": len(self._running),
            "chunk_frames": self.chunk_frames, "fps": FPS, "sample_rate": SAMPLE_RATE,
            "num_classes": self.generator.model.num_classes, "viewers": sum(s["viewers"] for s in streams)}

  def _unwatched(self, stream: LiveStream) -> None:
    stream.idle_timer = self._loop.call_later(self.grace_s, self._end_if_unwatched, stream)

  def _end_if_unwatched(self, stream: LiveStream) -> None:
    if not stream.viewers and not stream.ended:
      self.end(stream)

  def _publish(self, stream: LiveStream, fragment: bytes) -> None:
    if stream.first_fragment_s is None:
      stream.first_fragment_s = time.perf_counter() - stream.opened_at
    stream.last_fragment = fragment
    for viewer in stream.viewers:
      viewer.push(fragment)

  # --------------------------------------------------------------------------------------------------
  # Threads.

  def _start_streams(self) -> None:
    """The starter thread: pre-rolls new streams and compiles programs, in the order they were asked for."""
    while (task := self._tasks.get()) is not None:
      if isinstance(task, LiveStream):
        if not task.ended:
          state = self.batch.start(task.label, task.seed, task.guidance)
          with self._changed:
            task.state = state
            self._joining.append(task)
            self._changed.notify_all()
      else:
        self.batch.warm(task)
        with self._changed:
          self._warming.discard(task)
          self._changed.notify_all()
        self._warm_later((task[0], not task[1]))  # the same batch size's other program: a class switch needs both

  def _sample(self) -> None:
    """The sampler thread: one batched chunk per loop, paced, handed to each stream's thread."""
    chunk_s = self.chunk_frames / FPS
    while not self._stop.is_set():
      with self._changed:
        members = self._next_batch()
        wait = min((s.ahead_s(time.perf_counter()) for s in members), default=0.5) - self.lead_s
        if not members or wait > 0:
          self._changed.wait(min(wait, 0.5) if members else 0.5)
          continue
      start = time.perf_counter()
      video, mel = self.batch.roll([s.state for s in members])
      network_s = time.perf_counter() - start
      for b, stream in enumerate(members):
        stream.network_s += network_s
        if stream.clock_start is None:
          stream.clock_start = time.perf_counter() - chunk_s  # the chunk is playing from now on
        self._hand_over(stream, (video[b:b + 1], mel[b:b + 1]))

  def _next_batch(self) -> list[LiveStream]:
    """The streams of the next chunk, with the label and guidance they were asked for (under the lock).

    Streams join and leave, and guidance changes, only where the program they need is compiled; otherwise the
    starter compiles it and the batch keeps its members and guidance until then. Labels change at once.
    """
    wanted = [s for s in self._running if not s.ended] + [s for s in self._joining if not s.ended]
    for stream in wanted:
      if stream.state.label != stream.label:
        stream.state.label, stream.label_since_frame = stream.label, stream.state.frames
        stream.switch_until = stream.state.frames + self.generator.model.predict_frames
    guidances = [max(s.guidance, self.switch_guidance) if s.state.frames < s.switch_until else s.guidance
                 for s in wanted]
    program = self.batch.program(guidances)
    if not wanted or program in self.batch.compiled:
      self._running, self._joining = wanted, []
      for stream, guidance in zip(wanted, guidances):
        stream.state.guidance = guidance
    else:
      self._warm_later(program)
    return self._running

  def _warm_later(self, program: tuple[int, bool]) -> None:
    """Asks the starter to compile a program, unless it is compiled or asked for."""
    guided_model = bool(self.generator.model.num_classes)
    with self._changed:
      if program not in self.batch.compiled and program not in self._warming and (guided_model or not program[1]):
        self._warming.add(program)
        self._tasks.put(program)

  def _hand_over(self, stream: LiveStream, chunk) -> None:
    """Queues a chunk for the stream's thread; waits while that thread is busy (the pipeline's back pressure)."""
    while not (stream.ended or self._stop.is_set()):
      try:
        stream.chunks.put(chunk, timeout=0.1)
        return
      except queue.Full:
        pass

  def _post(self, stream: LiveStream) -> None:
    """A stream's thread: decoding, vocoding and fMP4 encoding of its chunks, fragments to the event loop."""
    encoder, waited = FragmentEncoder(FPS, SAMPLE_RATE), [0.0]

    def chunks():
      while not (stream.ended or self._stop.is_set()):
        start = time.perf_counter()
        try:
          chunk = stream.chunks.get(timeout=0.1)
        except queue.Empty:
          continue
        finally:
          waited[0] += time.perf_counter() - start
        yield chunk

    began = time.perf_counter()
    for chunk in self.generator.decode(chunks(), 1):
      fragments = encoder.write(chunk.video[0], chunk.wav[0])
      stream.frames_sent += chunk.video.shape[1]
      stream.post_s = time.perf_counter() - began - waited[0]
      if stream.init is None and encoder.init is not None:
        stream.init, stream.codecs = encoder.init, encoder.codecs
      for fragment in fragments:
        self._loop.call_soon_threadsafe(self._publish, stream, fragment)
