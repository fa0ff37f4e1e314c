"""The API seen from the client: requests with the token, errors as exceptions, pages walked,
names resolved to UUIDs."""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from baas_cli import __version__
from baas_cli.config import Profile
from baas_cli.errors import ApiError, LocalError, message_of

if TYPE_CHECKING:
    import httpx

TIMEOUT_SECONDS, CONNECT_SECONDS = 60.0, 15.0
IMAGE_REF = re.compile(r"^(?P<image>.+?)(?:@(?P<version>\d+|latest))?$")


class Api:
    def __init__(self, profile: Profile, *, need_token: bool = True) -> None:
        if not profile.url:
            raise LocalError(
                "No BAAS to talk to: run `baas login URL` first, or set BAAS_URL and BAAS_TOKEN."
            )
        if need_token and not profile.token:
            raise LocalError(
                f"Not logged in to {profile.url}: run `baas login`, or set BAAS_TOKEN."
            )
        self.profile = profile
        self._http: httpx.Client | None = None
        self._me: dict[str, Any] | None = None

    @property
    def http(self) -> httpx.Client:
        """The HTTP client, made (and httpx imported) only when a command needs one: an
        upload's bytes go out through :mod:`baas_cli.wire`, and start-up counts there."""
        if self._http is None:
            import httpx

            headers = {"User-Agent": f"baas-cli/{__version__}", "Accept": "application/json"}
            if self.profile.token:
                headers["Authorization"] = f"Bearer {self.profile.token}"
            timeout = httpx.Timeout(TIMEOUT_SECONDS, connect=CONNECT_SECONDS)
            self._http = httpx.Client(base_url=self.profile.url, headers=headers, timeout=timeout)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # --- Requests ----------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LocalError(f"Cannot reach {self.profile.url}: {exc}") from exc
        check(response)
        return response

    def get_object(self, path: str, **params: Any) -> dict[str, Any]:
        answer = self.get(path, **params)
        if not isinstance(answer, dict):
            raise LocalError(f"The server's answer to {path} is not an object.")
        return answer

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=_params(params)).json()

    def post(self, path: str, body: Any = None) -> Any:
        response = self.request("POST", path, json=body if body is not None else {})
        return response.json() if response.content else None

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body).json()

    def delete(self, path: str, body: Any = None) -> None:
        self.request("DELETE", path, json=body)

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list, following ``next``."""
        answer = self.get(path, limit=200, **params)
        while True:
            yield from answer["results"]
            if not answer.get("next"):
                return
            answer = self.request("GET", answer["next"]).json()

    # --- Who and what ------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        if self._me is None:
            self._me = self.get_object("/api/user/me")
        return self._me

    def image(self, reference: str) -> dict[str, Any]:
        """An image by UUID, name, or owner/name; an ambiguous name lists the candidates."""
        if is_uuid(reference):
            return self.get_object(f"/api/image/{reference}")
        owner, _, name = reference.rpartition("/")
        params = {"name": name, **({"owner": owner} if owner else {})}
        found = list(self.pages("/api/images", **params))
        return _one(found, reference, "image", lambda i: f"{i['owner']}/{i['name']}  {i['uuid']}")

    def image_version(self, reference: str) -> tuple[dict[str, Any], int | None]:
        """``IMAGE[@N]``: the image and the version number (None: the latest)."""
        match = IMAGE_REF.match(reference)
        assert match is not None
        number = match["version"]
        image = self.image(match["image"])
        return image, int(number) if number and number != "latest" else None

    def setup(self, reference: str) -> dict[str, Any]:
        """One of your setups by UUID or name."""
        username = self.me()["username"]
        if is_uuid(reference):
            return self.get_object(f"/api/user/{username}/image_setup/{reference}")
        found = [
            s for s in self.pages(f"/api/user/{username}/image_setups") if s["name"] == reference
        ]
        return _one(found, reference, "setup", lambda s: f"{s['name']}  {s['uuid']}")

    def machine(self, reference: str) -> dict[str, Any]:
        """A machine by MAC address or name."""
        if re.fullmatch(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}", reference):
            return self.get_object(f"/api/machine/{reference}")
        found = [m for m in self.pages("/api/machines") if m["name"] == reference]
        return _one(found, reference, "machine", lambda m: f"{m['name']}  {m['mac_addresses']}")


def machine_mac(machine: dict[str, Any]) -> str:
    if not machine.get("mac_addresses"):
        raise LocalError(f"The machine {machine['name']} has no MAC address.")
    return str(machine["mac_addresses"][0])


def check(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        response.read()
        body = response.json()
    except ValueError:
        body = None
    raise ApiError(
        response.status_code, message_of(response.status_code, body, response.text), body
    )


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def is_uuid(text: str) -> bool:
    try:
        uuidlib.UUID(text)
    except ValueError:
        return False
    return True


def _one(found: list[dict[str, Any]], reference: str, kind: str, describe: Any) -> dict[str, Any]:
    if not found:
        raise LocalError(f"No {kind} named {reference!r}.")
    if len(found) > 1:
        listed = "\n  ".join(describe(item) for item in found)
        raise LocalError(
            f"{len(found)} {kind}s are named {reference!r}; name one by its UUID"
            f"{' or owner/name' if kind == 'image' else ''}:\n  {listed}"
        )
    return found[0]
