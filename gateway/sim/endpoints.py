"""The everyday endpoints: messages, contacts, health, metrics, stats, settings; 404 otherwise."""

from __future__ import annotations

import secrets
import string
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from .answers import answer, invalid, missing, not_found, read_json, string_field
from .media import MediaStore

if TYPE_CHECKING:
    from ..simulator import Simulator


class Endpoints:
    """The endpoints that neither manage accounts nor store media."""

    def __init__(self, sim: Simulator, media: MediaStore) -> None:
        self._sim = sim
        self._media = media

    async def send_message(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``."""
        string_field(await read_json(request), "to")
        alphabet = string.ascii_letters + string.digits
        message_id = "gBEG" + "".join(secrets.choice(alphabet) for _ in range(24))
        return answer({"messages": [{"id": message_id}]}, status=201)

    async def check_contacts(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/contacts``: a contact with digits is valid, its digits its ``wa_id``."""
        contacts = (await read_json(request)).get("contacts")
        if contacts is None:
            raise missing("contacts")
        if not isinstance(contacts, list) or not all(isinstance(c, str) for c in contacts):
            raise invalid("contacts must be a list of strings")
        results: list[dict[str, str]] = []
        for contact in contacts:
            wa_id = "".join(c for c in contact if c in string.digits)
            if wa_id:
                results.append({"input": contact, "status": "valid", "wa_id": wa_id})
            else:
                results.append({"input": contact, "status": "invalid"})
        return answer({"contacts": results})

    async def health(self, _request: web.Request) -> web.StreamResponse:
        """``GET /v1/health``."""
        return answer({"health": {"gateway_status": "connected"}})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """``GET /metrics``: JSON, or Prometheus text with ``?format=prometheus``."""
        values = {
            "requests_total": len(self._sim.seen),
            "logins_total": self._sim.logins,
            "tokens_valid": len(self._sim.tokens),
        }
        if request.query.get("format") != "prometheus":
            return answer({"metrics": values})
        lines: list[str] = []
        for name, value in values.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE wa_{name} {kind}", f"wa_{name} {value}"]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(),
            headers={hdrs.CONTENT_TYPE: "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def stats_app(self, _request: web.Request) -> web.StreamResponse:
        """``GET /v1/stats/app``."""
        stats = {"requests": len(self._sim.seen), "logins": self._sim.logins}
        return answer({"app": {"stats": stats}})

    async def stats_db(self, _request: web.Request) -> web.StreamResponse:
        """``GET /v1/stats/db``."""
        return answer(
            {"db": {"stats": {"users": len(self._sim.users), "media": self._media.count}}}
        )

    async def get_settings(self, _request: web.Request) -> web.StreamResponse:
        """``GET /v1/settings/application``."""
        return answer({"settings": {"application": self._sim.application_settings}})

    async def patch_settings(self, request: web.Request) -> web.StreamResponse:
        """``PATCH /v1/settings/application``: the body's fields replace the settings'."""
        self._sim.application_settings.update(await read_json(request))
        return answer({})

    async def unknown(self, _request: web.Request) -> web.StreamResponse:
        """Any other path: 404, code 1006."""
        raise not_found("Unknown path")
