"""A client for OCI distribution registries: resolve, pull and push manifests and blobs.

Why httpx and not oras-py: oras-py (evaluated, 0.2.x) is shaped for artifacts, not images. It
has no platform selection for indexes, returns manifests as parsed dicts (the exact bytes, and so
the manifest digest, are lost), does not verify downloaded blobs against their digests, ships no
type information, and brings ``requests`` and ``jsonschema``. What we would use of it is the thin
part (a GET and a monolithic PUT). httpx gives a typed, pooled, streaming sync client with a
pluggable auth flow (the Bearer challenge dance fits ``httpx.Auth`` exactly), so the protocol
logic here is small and all ours to check. Retries are tenacity's, bounded.

Plain HTTP is used only for loopback registries with ``insecure=True``, and for the hosts named in
``insecure_hosts`` (the daemon's ``--insecure-registry``, buildkitd's ``http = true``): anything else
is HTTPS, so a typo cannot send credentials in the clear.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import tenacity

from buildsvc.sources.content import ContentStore
from buildsvc.sources.errors import (
    AuthenticationFailed,
    DigestMismatch,
    ImageNotFound,
    RegistryError,
)
from buildsvc.sources.manifests import (
    ACCEPT,
    Descriptor,
    ResolvedImage,
    resolve_from,
    sha256_digest,
)
from buildsvc.sources.platforms import ImagePlatform, host_platform
from buildsvc.sources.reference import DEFAULT_DOMAIN, Reference

if TYPE_CHECKING:
    # At run time httpx is imported by the calls that talk HTTP (each engine makes a client, few
    # builds use it): see buildsvc.sources.registry_auth.
    import httpx

DOCKER_HUB_HOST = "registry-1.docker.io"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A username and password (or token) for one registry host."""

    username: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryOptions:
    """How the client talks to registries."""

    insecure: bool = False
    """Allow plain HTTP, for loopback hosts only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    insecure_hosts: frozenset[str] = frozenset()
    """Registries (``host[:port]`` as written in references, lowercase) always spoken to over plain HTTP."""
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    """Per registry host (``host[:port]``, as written in references); anonymous otherwise."""
    timeout: float = 60.0
    """Seconds for connecting and for each read."""
    attempts: int = 4
    """Tries per request for transient failures (connection errors, 429, 5xx)."""
    retry_wait: float = 0.2
    """First wait between tries in seconds; doubles each time, up to 2 s."""


class _TransientStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class RegistryClient:
    """Talks the distribution API to any number of registries; thread-safe like ``httpx.Client``."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        """A client whose pooled HTTP connections open on first use (close it, or use it as a
        context manager).
        """
        self.options = options or RegistryOptions()
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def _http(self) -> httpx.Client:
        # Made on first use: an httpx client (its transport, a TLS context with the system's CAs)
        # costs ~70 ms, and an engine whose builds are cached and whose base images were resolved
        # recently never talks to a registry.
        import httpx

        from buildsvc.sources.registry_auth import RegistryAuth

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self.options.timeout,
                    follow_redirects=True,
                    auth=RegistryAuth(self.options.credentials),
                    trust_env=False,
                )
            return self._client

    def close(self) -> None:
        """Close pooled connections, if any were opened."""
        with self._lock:
            if self._client is not None:
                self._client.close()

    def __enter__(self) -> RegistryClient:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close on exit."""
        self.close()

    # Pull

    def get_manifest(self, ref: Reference, reference: str | None = None) -> tuple[bytes, str | None]:
        """The raw manifest or index ``reference`` (default: the ref's digest or tag) and its
        content type; a digest reference is verified against the bytes.
        """
        target = reference or ref.reference
        url = self._url(ref, f"manifests/{target}")

        def attempt() -> tuple[bytes, str | None]:
            response = self._http.get(url, headers={"Accept": ACCEPT})
            self._check(response, ref, f"manifest {target}")
            return response.content, response.headers.get("content-type")

        data, content_type = self._retry(url, attempt)
        if target.startswith("sha256:") and sha256_digest(data) != target:
            raise DigestMismatch(f"manifest {ref.name}@{target}", target, sha256_digest(data))
        return data, content_type

    def resolve(
        self, ref: Reference, platform: ImagePlatform | None = None, *, keep: ContentStore | None = None
    ) -> ResolvedImage:
        """Resolve ``ref`` to one image manifest, picking ``platform`` (default: the host's).

        With ``keep``, every manifest and index read on the way is stored there by its digest (so a
        later resolve of a digest can be answered from the store: see ``sources.images.resolve_image``).
        """

        def fetch(reference: str | None = None) -> tuple[bytes, str | None]:
            data, content_type = self.get_manifest(ref, reference)  # a digest is verified
            if keep is not None:
                keep.put(data)
            return data, content_type

        def fetch_child(entry: Descriptor) -> bytes:
            return fetch(entry.digest)[0]

        return resolve_from(str(ref), fetch(), fetch_child, platform or host_platform())

    def fetch_blob(self, ref: Reference, desc: Descriptor, store: ContentStore) -> str:
        """Download ``desc`` into ``store`` (verified; nothing is stored when it is corrupt)."""
        url = self._url(ref, f"blobs/{desc.digest}")

        def attempt() -> str:
            with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    response.read()
                self._check(response, ref, f"blob {desc.digest}")
                return store.ingest(
                    desc.digest,
                    response.iter_bytes(_CHUNK),
                    size=desc.size,
                    what=f"blob {desc.digest} of {ref}",
                )

        return self._retry(url, attempt)

    @contextmanager
    def open_blob(self, ref: Reference, desc: Descriptor) -> Iterator[_ResponseReader]:
        """The blob's bytes as a stream, to consume once as they arrive (nothing stored, unverified:
        the reader hashes nothing, the consumer checks the digest). Only the response's start is
        retried; a body that breaks off raises ``RegistryError`` and the caller starts over.
        """
        url = self._url(ref, f"blobs/{desc.digest}")

        def attempt() -> httpx.Response:
            response = self._http.send(self._http.build_request("GET", url), stream=True)
            if response.status_code != 200:
                try:
                    response.read()
                    self._check(response, ref, f"blob {desc.digest}")
                finally:
                    response.close()
            return response

        response = self._retry(url, attempt)
        try:
            yield _ResponseReader(response.iter_bytes(_CHUNK), url)
        finally:
            response.close()

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        """Whether the repository of ``ref`` has the blob ``digest``."""
        url = self._url(ref, f"blobs/{digest}")

        def attempt() -> bool:
            response = self._http.head(url)
            if response.status_code == 404:
                return False
            self._check(response, ref, f"blob {digest}")
            return True

        return self._retry(url, attempt)

    # Push

    def push_blob(
        self,
        ref: Reference,
        digest: str,
        chunks: Callable[[], Iterator[bytes]],
        size: int,
        *,
        mount_from: str = "",
    ) -> None:
        """Upload a blob (monolithic POST + PUT) unless the repository already has it.

        ``chunks`` is called once per try, so a retried upload starts again from the beginning.
        ``mount_from`` names a repository of the same registry that has the blob: the registry is
        asked to mount it from there (a cross-repository mount, no bytes sent); one that will not
        answers with an upload session, and the bytes go up as usual.
        """
        if self.blob_exists(ref, digest):
            return
        start_url = self._url(ref, "blobs/uploads/")
        mount = {"mount": digest, "from": mount_from} if mount_from and mount_from != ref.path else {}

        def attempt() -> None:
            import httpx  # loaded by the POST

            # The POST carries no body, so an auth challenge is answered here and the PUT (whose
            # streamed body cannot be replayed) goes out with a token that already fits.
            started = self._http.post(start_url, params=mount, headers={"Content-Length": "0"})
            if mount and started.status_code == 201:
                return  # mounted
            self._check(started, ref, "blob upload", ok=(202,))
            location = started.headers.get("location")
            if not location:
                raise RegistryError(start_url, started.status_code, "no Location for the upload")
            upload = httpx.URL(start_url).join(location)
            upload = upload.copy_merge_params({"digest": digest})
            done = self._http.put(
                upload,
                content=chunks(),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            self._check(done, ref, f"blob {digest}", ok=(201,))

        self._retry(start_url, attempt)

    def push_blob_bytes(self, ref: Reference, data: bytes) -> str:
        """Upload ``data`` as a blob and return its digest."""
        digest = sha256_digest(data)
        self.push_blob(ref, digest, lambda: iter([data]), len(data))
        return digest

    def push_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None = None) -> str:
        """Upload a manifest or index under ``tag`` (default: the ref's tag, else its digest)."""
        digest = sha256_digest(data)
        target = tag or ref.tag or digest
        url = self._url(ref, f"manifests/{target}")

        def attempt() -> None:
            response = self._http.put(url, content=data, headers={"Content-Type": media_type})
            self._check(response, ref, f"manifest {target}", ok=(201,))

        self._retry(url, attempt)
        return digest

    # Plumbing

    def base_url(self, domain: str) -> str:
        """``scheme://host`` for a reference's domain."""
        host = DOCKER_HUB_HOST if domain == DEFAULT_DOMAIN else domain
        plain = host.lower() in self.options.insecure_hosts or (self.options.insecure and is_loopback(host))
        scheme = "http" if plain else "https"
        return f"{scheme}://{host}"

    def _url(self, ref: Reference, tail: str) -> str:
        return f"{self.base_url(ref.domain)}/v2/{ref.path}/{tail}"

    def _check(
        self, response: httpx.Response, ref: Reference, what: str, ok: tuple[int, ...] = (200,)
    ) -> None:
        status = response.status_code
        if status in ok:
            return
        if status in _TRANSIENT_STATUS:
            raise _TransientStatus(response)
        message = error_message(response)
        if status == 404:
            raise ImageNotFound(str(ref), what)
        if status in (401, 403):
            raise AuthenticationFailed(str(response.url), status, message)
        raise RegistryError(str(response.url), status, message)

    def _retry(self, url: str, attempt: Callable[[], _T]) -> _T:
        import httpx

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.options.attempts)),
            wait=tenacity.wait_exponential(multiplier=self.options.retry_wait, max=2.0),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _TransientStatus)),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _TransientStatus as e:
            raise RegistryError(url, e.response.status_code, error_message(e.response)) from e
        except httpx.HTTPError as e:
            hint = ""
            if url.startswith("https://") and "WRONG_VERSION_NUMBER" in str(e):
                # What TLS to a plain-HTTP server looks like: say how to allow it.
                hint = " (the registry seems to serve plain HTTP: "
                hint += "start the daemon with --insecure-registry HOST)"
            raise RegistryError(url, None, f"{type(e).__name__}: {e}{hint}") from e


class _ResponseReader:
    """A file-like ``read`` over a response body's chunks (what tarfile and the decompressors take)."""

    def __init__(self, chunks: Iterator[bytes], url: str) -> None:
        self._chunks = chunks
        self._url = url
        self._buffer = b""

    def read(self, size: int = -1, /) -> bytes:
        import httpx  # loaded already: a response is being read

        while size < 0 or len(self._buffer) < size:
            try:
                chunk = next(self._chunks, b"")
            except httpx.HTTPError as e:
                raise RegistryError(
                    self._url, None, f"the download broke off: {type(e).__name__}: {e}"
                ) from e
            if not chunk:
                break
            self._buffer = chunk if not self._buffer else self._buffer + chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def error_message(response: httpx.Response) -> str:
    """The registry's own error codes and messages from a failed response (or the body's start)."""
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or response.text[:200]
    except (ValueError, AttributeError):
        return response.text[:200]
