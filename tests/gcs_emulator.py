"""A local Google Cloud Storage emulator for tests: gcp-storage-emulator, in memory, on 127.0.0.1.

  with running_emulator("bucket") as host:   # "127.0.0.1:<free port>", the bucket created
    ... STORAGE_EMULATOR_HOST=host ...

It runs in a subprocess (`python tests/gcs_emulator.py PORT BUCKET`), with two changes to gcp-storage-emulator:
- real GCS sends an object's generation in the x-goog-generation header of every download; the emulator does not,
  and TensorStore (the arrays of Orbax checkpoints) refuses a read without it ("Malformed StorageGeneration");
- the emulator serves one connection at a time from a queue of 5, and a restore's many parallel TensorStore reads
  stalled on it; here each connection gets a thread, which waits for its request and then runs the emulator's
  handler under one lock (the emulator's storage is not made for threads).
"""
import contextlib
import http.client
import http.server
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

_START_TIMEOUT_S = 60


@contextlib.contextmanager
def running_emulator(bucket: str):
  """Starts the emulator with `bucket` (3+ characters), yields its "host:port", stops it on exit."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  # The emulator logs every request: into a file, as a pipe nobody reads would fill and stall the emulator.
  with tempfile.TemporaryFile("w+") as log:
    server = subprocess.Popen([sys.executable, __file__, str(port), bucket], stdout=log, stderr=subprocess.STDOUT,
                              text=True)
    try:
      host = f"127.0.0.1:{port}"
      deadline = time.monotonic() + _START_TIMEOUT_S
      while request(host, "GET", f"/storage/v1/b/{bucket}")[0] != 200:
        if server.poll() is not None or time.monotonic() > deadline:
          log.seek(0)
          raise AssertionError(f"the emulator did not start: {log.read()[-3000:]}")
        time.sleep(0.1)
      yield host
    finally:
      server.kill()
      server.wait()


def request(host: str, method: str, path: str) -> tuple[int, bytes]:
  """(status, body) of one HTTP request to the emulator; status 0 when it does not answer."""
  connection = http.client.HTTPConnection(host, timeout=30)
  try:
    connection.request(method, path)
    response = connection.getresponse()
    return response.status, response.read()
  except OSError:
    return 0, b""
  finally:
    connection.close()


def object_names(host: str, bucket: str, prefix: str = "") -> list[str]:
  """The names of all objects in `bucket` under `prefix`, read from the emulator's JSON API."""
  import json  # pylint: disable=g-import-not-at-top
  names, token = [], ""
  while True:
    query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
    status, body = request(host, "GET", f"/storage/v1/b/{bucket}/o?{query}")
    assert status == 200, body
    listing = json.loads(body)
    names += [item["name"] for item in listing.get("items", [])]
    token = listing.get("nextPageToken")
    if not token:
      return names


def read_object(host: str, bucket: str, name: str) -> bytes | None:
  """The content of object `name`, or None when it does not exist."""
  status, body = request(host, "GET", f"/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
                                      "?alt=media")
  return body if status == 200 else None


def _serve(port: int, bucket: str) -> None:
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status < 300:
      stored = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = stored["generation"]
      response["x-goog-metageneration"] = stored["metageneration"]

  objects.download = download_with_generation  # before the server module builds its routing table from it
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  handle, lock = server.Router.handle, threading.Lock()

  def handle_alone(router, method):
    with lock:
      handle(router, method)

  class ThreadingServer(http.server.ThreadingHTTPServer):
    request_queue_size = 128

  server.Router.handle = handle_alone
  http.server.HTTPServer = ThreadingServer  # what the emulator's server thread creates
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
