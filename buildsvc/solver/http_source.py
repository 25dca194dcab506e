"""Downloads for ``https://`` and ``http://`` sources, kept in a content-addressed cache on disk.

Modeled on BuildKit's ``source/http``: a source pinned by ``http.checksum`` is keyed by that digest
without any request, and is downloaded only when its blob is not in the cache yet; an unpinned
source is keyed by the digest of what the server sends, asked for with the ``ETag`` seen last time
(``If-None-Match``) so an unchanged file is not sent twice.

Layout under the cache dir::

    blobs/sha256/<hex>       the downloaded bytes, named by their digest (written once, renamed in)
    urls/<sha256(url)>.json  {"url", "etag", "digest"}: what the URL served last
    tmp/                     downloads in progress (a failed or mismatched one is deleted)

The blobs are a cache, not state: losing them costs a download, never a wrong result, because
every blob is verified against its name when it is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsvc.errors import ExecutionError
from buildsvc.keyed_locks import KeyedLocks

if TYPE_CHECKING:
    # Imported where a download needs it: every engine makes a downloader, few builds download, and
    # httpx's import is ~20 ms of each embedded build's start.
    import httpx

__all__ = ["ChecksumMismatch", "DownloadError", "HttpDownloader"]

_CHUNK = 1 << 20
# Statuses worth another try: the server or a proxy in front of it is briefly unable to answer.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(ExecutionError):
    """A download failed: ``status`` is the HTTP status, or ``None`` when no response came."""

    def __init__(self, url: str, message: str, *, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(f"download {url}: {message}")


class ChecksumMismatch(DownloadError):
    """The bytes a URL served do not have the digest the definition pinned."""

    def __init__(self, url: str, *, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(url, f"checksum mismatch: expected {expected}, got {actual}", status=200)


class HttpDownloader:
    """Fetches URLs into the blob cache under ``cache_dir``; safe to share between threads."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 60.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.cache_dir = cache_dir
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        # Two vertices fetching one URL at once download it once: the second finds the blob.
        self._url_locks = KeyedLocks()

    def close(self) -> None:
        """Close the connection pool (a later download opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- the two calls the source handler makes ---------------------------------------------------

    def content_digest(self, url: str, checksum: str | None) -> str:
        """What the source's result depends on: the pinned checksum, else the served bytes' digest.

        A pinned source makes no request here: the digest is known, and a cache hit on it must not
        depend on the server being up (BuildKit's ``http`` source does the same).
        """
        if checksum is not None:
            return checksum
        with self._url_locks.hold(url):
            return self._download(url, expected=None, conditional=True)

    def fetch(self, url: str, checksum: str | None) -> Path:
        """The cached blob for ``url``: downloaded (and verified) only when the cache lacks it.

        Unpinned, the digest is the one :meth:`content_digest` just recorded for the URL; a blob that
        went missing since is downloaded again and must still have that digest.
        """
        with self._url_locks.hold(url):
            expected = checksum
            if expected is None:
                entry = self._entry(url)
                expected = entry.get("digest") if entry is not None else None
            if expected is not None and self._blob(expected).is_file():
                return self._blob(expected)
            return self._blob(self._download(url, expected=expected, conditional=False))

    # --- internals --------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout, follow_redirects=True)
            return self._client

    def _blob(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        return self.cache_dir / "blobs" / algorithm / hex_digest

    def _entry_path(self, url: str) -> Path:
        return self.cache_dir / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    def _entry(self, url: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._entry_path(url).read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("url") == url else None

    def _write_entry(self, url: str, etag: str, digest: str) -> None:
        path = self._entry_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"url": url, "etag": etag, "digest": digest}))
        os.replace(tmp, path)

    def _download(self, url: str, *, expected: str | None, conditional: bool) -> str:
        """Download ``url`` into the blob cache and return its digest, retrying transient failures."""
        headers: dict[str, str] = {}
        entry = self._entry(url) if conditional else None
        if entry is not None and entry.get("etag") and self._blob(str(entry["digest"])).is_file():
            headers["If-None-Match"] = str(entry["etag"])
        last: DownloadError | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._download_once(url, headers, entry, expected)
            except _Transient as e:
                last = e.error
        assert last is not None
        raise last

    def _download_once(
        self, url: str, headers: dict[str, str], entry: dict[str, Any] | None, expected: str | None
    ) -> str:
        import httpx

        tmp_dir = self.cache_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="download-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self._http().stream("GET", url, headers=headers) as response:
                        status = response.status_code
                        if status == 304 and entry is not None:
                            return str(entry["digest"])
                        if status != 200:
                            error = DownloadError(
                                url, f"HTTP {status} {response.reason_phrase}".rstrip(), status=status
                            )
                            if status in _TRANSIENT_STATUS:
                                raise _Transient(error)
                            raise error
                        hasher = hashlib.sha256()
                        for chunk in response.iter_bytes(_CHUNK):
                            hasher.update(chunk)
                            out.write(chunk)
                        etag = response.headers.get("ETag", "")
                except httpx.TransportError as e:
                    raise _Transient(DownloadError(url, f"{type(e).__name__}: {e}")) from e
            digest = f"sha256:{hasher.hexdigest()}"
            if expected is not None and digest != expected:
                raise ChecksumMismatch(url, expected=expected, actual=digest)
            blob = self._blob(digest)
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, blob)
            self._write_entry(url, etag, digest)
            return digest
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


class _Transient(Exception):
    """A failure another attempt may not have (no response, a 5xx, a 429)."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error
