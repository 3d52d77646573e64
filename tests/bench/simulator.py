"""The ``simulator`` role (``python -m tests.bench simulator PORT CONTROL_PORT MEDIA_DIR``): the
simulated Webapp, and a control app whose ``GET /counts`` says what it answered, by shape."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from gateway.simulator import Simulator

from ..conftest import API_KEY, PASSWORD

# The simulator records every request it sees; a long run would keep hundreds of thousands of
# records, and the garbage collector's walks over them would slow the later targets' runs.
SEEN_KEEP = 10_000


def shape_of(path: str) -> str:
    """The request shape a path belongs to, as the simulator counts its answers."""
    if path == "/v1/messages":
        return "message"
    if path.startswith("/v1/media/"):
        return "media"
    return "other"


def simulator_apps(media_dir: str) -> tuple[web.Application, web.Application]:
    """The simulated Webapp, and a control app whose ``GET /counts`` says what it answered."""
    sim = Simulator(
        password=PASSWORD, password_change_required=False, api_key=API_KEY, media_dir=media_dir
    )
    app = sim.make_app()
    answers: Counter[str] = Counter()

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        answers[f"{shape_of(request.path)} {response.status}"] += 1
        if len(sim.seen) > SEEN_KEEP:
            sim.seen.clear()

    async def counts(_request: web.Request) -> web.Response:
        return web.json_response({"in_flight": sim.in_flight, "answers": answers})

    app.on_response_prepare.append(count)
    control = web.Application()
    control.router.add_get("/counts", counts)
    return app, control
