"""The registry auth flow (Bearer token service and Basic challenges) against an in-process fake
registry (httpx's MockTransport): what each request carries, and that tokens are kept per repository.
"""

from __future__ import annotations

import base64
import re

import httpx
import pytest

from buildsvc.sources.errors import AuthenticationFailed
from buildsvc.sources.registry import Credentials
from buildsvc.sources.registry_auth import RegistryAuth

HOST = "registry.test"
REALM = "https://auth.test/token"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeRegistry:
    """Answers 401 with a challenge unless the request carries the header it wants."""

    def __init__(self, scheme: str, token_status: int = 200) -> None:
        self.scheme = scheme
        self.token_status = token_status
        # What each request carried when it came (the flow re-sends the same request object).
        self.seen: list[tuple[str, dict[str, str]]] = []

    def wanted(self, repo: str) -> str:
        return f"Bearer token-for-{repo}" if self.scheme == "bearer" else _basic("alice", "s3cret")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.host, dict(request.headers)))
        if request.url.host == "auth.test":
            if self.token_status != 200:
                denied = {"errors": [{"code": "DENIED", "message": "no"}]}
                return httpx.Response(self.token_status, json=denied)
            scope = request.url.params["scope"]
            assert request.url.params["service"] == "registry.test"
            return httpx.Response(200, json={"token": f"token-for-{scope.split(':')[1]}"})
        repo = re.sub(r"^/v2/(.+?)/(manifests|blobs)/.*$", r"\1", request.url.path)
        if request.headers.get("Authorization") == self.wanted(repo):
            return httpx.Response(200, content=b"manifest")
        if self.scheme == "bearer":
            challenge = f'Bearer realm="{REALM}",service="registry.test",scope="repository:{repo}:pull"'
        else:
            challenge = 'Basic realm="registry"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})


def _client(registry: FakeRegistry, credentials: dict[str, Credentials]) -> httpx.Client:
    return httpx.Client(auth=RegistryAuth(credentials), transport=httpx.MockTransport(registry))


def test_a_bearer_challenge_is_answered_with_a_token_asked_with_the_credentials() -> None:
    registry = FakeRegistry("bearer")
    with _client(registry, {HOST: Credentials(username="alice", password="s3cret")}) as client:
        response = client.get(f"https://{HOST}/v2/team/app/manifests/latest")
    assert response.status_code == 200
    (_, first), (token_host, token), (_, retried) = registry.seen
    assert "authorization" not in first
    assert token_host == "auth.test" and token["authorization"] == _basic("alice", "s3cret")
    assert retried["authorization"] == "Bearer token-for-team/app"


def test_a_token_is_sent_up_front_next_time_for_the_same_repository_only() -> None:
    registry = FakeRegistry("bearer")
    with _client(registry, {}) as client:  # anonymous: the token service is asked without credentials
        client.get(f"https://{HOST}/v2/team/app/manifests/latest")
        registry.seen.clear()
        assert client.get(f"https://{HOST}/v2/team/app/blobs/sha256:00").status_code == 200
        assert [headers["authorization"] for _, headers in registry.seen] == ["Bearer token-for-team/app"]
        registry.seen.clear()
        assert client.get(f"https://{HOST}/v2/other/manifests/latest").status_code == 200
    (_, again), (_, anonymous), (_, retried) = registry.seen
    assert "authorization" not in again  # another repository: challenged again
    assert "authorization" not in anonymous  # no credentials for the token service
    assert retried["authorization"] == "Bearer token-for-other"


def test_a_basic_challenge_is_answered_only_with_credentials_for_the_host() -> None:
    registry = FakeRegistry("basic")
    with _client(registry, {HOST: Credentials(username="alice", password="s3cret")}) as client:
        assert client.get(f"https://{HOST}/v2/app/manifests/latest").status_code == 200
    elsewhere = {"elsewhere.test": Credentials(username="alice", password="s3cret")}
    with _client(FakeRegistry("basic"), elsewhere) as client:
        assert client.get(f"https://{HOST}/v2/app/manifests/latest").status_code == 401


def test_a_token_service_that_refuses_is_an_authentication_error_naming_it() -> None:
    with (
        _client(FakeRegistry("bearer", token_status=403), {}) as client,
        pytest.raises(AuthenticationFailed) as failed,
    ):
        client.get(f"https://{HOST}/v2/app/manifests/latest")
    assert REALM in str(failed.value) and "DENIED: no" in str(failed.value)
