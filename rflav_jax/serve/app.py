"""The HTTP face of a StreamHub (aiohttp): the page, the plain fMP4 endpoint and a small JSON API.

  GET    /                           the page: plays a stream of its own with sound, class and guidance switchable
  GET    /stream.mp4?label=L&seed=S&guidance=G
                                     an endless fragmented MP4 (H.264 + AAC, 10 fps, 16 kHz) for any player; viewers
                                     of the same label, seed and guidance share one stream
  POST   /api/streams?label=&seed=&guidance=
                                     a stream of one's own: {"id", "url"}; it ends after the grace period unless
                                     someone watches GET /streams/<id>.mp4
  POST   /api/streams/<id>?label=&guidance=
                                     changes its class and guidance from the next chunk on
  DELETE /api/streams/<id>           ends it now
  GET    /api/streams/<id>           its figures;  GET /api/stats: every stream's, and the server's

Bad parameters get 400 with what was wrong, a full server 503 with why; a stream response carries the codecs of
its video in the X-Codecs header (what Media Source Extensions need before the first byte).
"""
import asyncio
import os
import pathlib
import socket
import time

from aiohttp import web

from rflav_jax.serve.hub import HubFull, LiveStream, StreamHub
from rflav_jax.serve.requests import BadRequest, StreamRequest, parse_request

PAGE = pathlib.Path(__file__).with_name("static") / "index.html"
_HUB = web.AppKey("hub", StreamHub)
_SEND_BUFFER_BYTES = 16 * 1024  # about 2 s of the shipped model's stream


def make_app(hub: StreamHub) -> web.Application:
  """The application serving `hub`; it starts the hub on startup and closes it (ending every stream) on shutdown."""
  app = web.Application()
  app[_HUB] = hub
  app.add_routes([
      web.get("/", lambda request: web.FileResponse(PAGE)),
      web.get("/stream.mp4", _shared_stream),
      web.get("/streams/{id}.mp4", _own_stream),
      web.post("/api/streams", _open),
      web.post("/api/streams/{id}", _change),
      web.delete("/api/streams/{id}", _end),
      web.get("/api/streams/{id}", _stream_stats),
      web.get("/api/stats", lambda request: web.json_response(request.app[_HUB].stats())),
  ])

  async def start(app):
    app[_HUB].start(asyncio.get_running_loop())

  async def close(app):
    app[_HUB].close()

  app.on_startup.append(start)
  app.on_shutdown.append(close)
  return app


def listen(host: str, port: int) -> socket.socket:
  """A socket bound to host:port (port 0: a free one), before the slow start of a hub; OSError saying why not."""
  try:
    return socket.create_server((host, port))
  except OSError as error:
    raise OSError(f"cannot listen on {host}:{port} ({os.strerror(error.errno)}); choose another host or port") from None


def serve(hub: StreamHub, sock: socket.socket) -> None:
  """Serves `hub` on a `listen`ing socket until SIGINT or SIGTERM, then ends every stream; prints the address."""
  host, port = sock.getsockname()[:2]
  print(f"serving on http://{host}:{port}/", flush=True)
  web.run_app(make_app(hub), sock=sock, print=None, shutdown_timeout=5.0)


def _request(request: web.Request, **kwargs) -> StreamRequest:
  try:
    return parse_request(request.query, request.app[_HUB].generator.model.num_classes, **kwargs)
  except BadRequest as error:
    raise web.HTTPBadRequest(text=f"{error}\n") from None


def _open_or_503(request: web.Request, stream_request: StreamRequest, shared: bool) -> LiveStream:
  try:
    return request.app[_HUB].open(stream_request, shared)
  except HubFull as error:
    raise web.HTTPServiceUnavailable(text=f"{error}\n", headers={"Retry-After": "10"}) from None


def _find(request: web.Request) -> LiveStream:
  try:
    return request.app[_HUB].find(request.match_info["id"])
  except KeyError:
    raise web.HTTPNotFound(text=f"no stream {request.match_info['id']} (it ended, or never was)\n") from None


async def _shared_stream(request: web.Request) -> web.StreamResponse:
  stream = _open_or_503(request, _request(request), shared=True)
  return await _send(request, stream)


async def _own_stream(request: web.Request) -> web.StreamResponse:
  return await _send(request, _find(request))


async def _send(request: web.Request, stream: LiveStream) -> web.StreamResponse:
  """The stream as fMP4: its init segment, then fragments as they come, until it ends or the viewer leaves."""
  hub = request.app[_HUB]
  connection = request.transport.get_extra_info("socket")
  if connection is not None:  # a small kernel buffer: a stalled viewer's own queue fills, and it skips ahead
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
  viewer = hub.watch(stream)
  response = web.StreamResponse(headers={"Content-Type": "video/mp4", "Cache-Control": "no-store"})
  try:
    fragment = await viewer.next()
    if fragment is None:
      raise web.HTTPNotFound(text=f"stream {stream.id} has ended\n")
    response.headers["X-Codecs"] = stream.codecs
    await response.prepare(request)
    await response.write(stream.init)
    while fragment is not None:
      await response.write(fragment)
      fragment = await viewer.next()
  except (ConnectionResetError, ConnectionError):
    pass  # the viewer left
  finally:
    hub.unwatch(stream, viewer)
  return response


async def _open(request: web.Request) -> web.Response:
  stream = _open_or_503(request, _request(request), shared=False)
  return web.json_response({"id": stream.id, "url": f"/streams/{stream.id}.mp4", **stream.stats(time.perf_counter())})


async def _change(request: web.Request) -> web.Response:
  stream = _find(request)
  try:
    request.app[_HUB].change(stream, _request(request, defaults=stream.request, allowed=("label", "guidance")))
  except ValueError as error:
    raise web.HTTPBadRequest(text=f"{error}\n") from None
  return web.json_response({"label": stream.label, "guidance": stream.guidance})


async def _end(request: web.Request) -> web.Response:
  request.app[_HUB].end(_find(request))
  return web.json_response({"ended": request.match_info["id"]})


async def _stream_stats(request: web.Request) -> web.Response:
  return web.json_response(_find(request).stats(time.perf_counter()))
