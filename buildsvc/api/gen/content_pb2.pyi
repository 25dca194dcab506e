from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ManifestChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class MissingResponse(_message.Message):
    __slots__ = ("manifest_digest", "missing")
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    manifest_digest: str
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, manifest_digest: _Optional[str] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("digest", "path", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    path: str
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadBatch(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[UploadChunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[UploadChunk, _Mapping]]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("blobs", "bytes")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    blobs: int
    bytes: int
    def __init__(self, blobs: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("build_ref", "index")
    BUILD_REF_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    build_ref: str
    index: int
    def __init__(self, build_ref: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("exporter", "digest", "size", "data")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    digest: str
    size: int
    data: bytes
    def __init__(self, exporter: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
