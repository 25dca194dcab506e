"""The registry client's answers to ``WWW-Authenticate`` challenges, as an httpx auth flow.

Apart from :mod:`buildsvc.sources.registry` so that httpx loads only with the client's first HTTP
connection (:attr:`RegistryClient._http`): every engine makes a registry client, and builds whose
base images are held (pinned digests, recent resolves) never talk to a registry, while httpx's
import is ~20 ms of each embedded build's start.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING

import httpx

from buildsvc.sources.errors import AuthenticationFailed
from buildsvc.sources.registry import error_message

if TYPE_CHECKING:
    from buildsvc.sources.registry import Credentials

__all__ = ["RegistryAuth"]

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_REPOSITORY = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")


class RegistryAuth(httpx.Auth):
    """Answers ``WWW-Authenticate`` challenges: Bearer (token service, anonymous or with
    credentials) and Basic. Tokens are kept per host and repository and sent up front next time.
    """

    def __init__(self, credentials: Mapping[str, Credentials]) -> None:
        self._credentials = credentials
        self._headers: dict[tuple[str, str], str] = {}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = (request.url.netloc.decode(), _repository(request.url.path))
        known = self._headers.get(key)
        if known is not None:
            request.headers["Authorization"] = known
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("www-authenticate", "")
        scheme, _, rest = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        creds = self._credentials.get(key[0])
        if scheme.lower() == "basic":
            if creds is None:
                return
            header = _basic(creds)
        elif scheme.lower() == "bearer" and "realm" in params:
            query = {k: params[k] for k in ("service", "scope") if k in params}
            token_request = httpx.Request("GET", params["realm"], params=query)
            if creds is not None:
                token_request.headers["Authorization"] = _basic(creds)
            token_response = yield token_request
            token_response.read()
            if token_response.status_code != 200:
                raise AuthenticationFailed(
                    params["realm"], token_response.status_code, error_message(token_response)
                )
            body = token_response.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise AuthenticationFailed(params["realm"], 200, "token service returned no token")
            header = f"Bearer {token}"
        else:
            return
        self._headers[key] = header
        request.headers["Authorization"] = header
        yield request


def _repository(path: str) -> str:
    match = _REPOSITORY.match(path)
    return match.group(1) if match else ""


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
