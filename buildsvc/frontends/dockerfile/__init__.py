"""The Dockerfile frontend (BuildKit's ``dockerfile.v0``): a Dockerfile in, a definition out.

::

    from buildsvc.frontends.dockerfile import build_definition

    result = build_definition(text, options={"target": "app", "build-arg:VERSION": "1.2"},
                              resolver=RegistryImageResolver(client))
    result.definition      # a validated Definition; the Dockerfile is its source file
    result.image_config    # the OCI image config of the target stage

Supported: ``FROM`` (``AS``, ``scratch``, ``--platform`` of the host), multi-stage builds with
``--target``, ``COPY --from=<stage|index|image>``, ``RUN`` (shell and exec form, heredocs,
``--mount=type=bind|cache|tmpfs``, ``--network=default|none|host``), ``COPY``/``ADD`` (context files,
wildcards, heredocs, ``--chown``, octal ``--chmod``, ``--link``, ``--exclude``; ``ADD`` of an
``http(s)`` URL with ``--checksum``), ``WORKDIR``, ``ENV``, ``ARG`` (build args, defaults, meta args
and their scoping), ``USER``, ``LABEL``, ``EXPOSE``, ``ENTRYPOINT``, ``CMD``, ``SHELL``,
``STOPSIGNAL``, ``HEALTHCHECK``, ``VOLUME``, ``MAINTAINER``, and BuildKit's variable expansion.
Refused with a clear error for now: ``ONBUILD``, ``RUN --mount=type=secret|ssh``, ``COPY --parents``,
git sources, symbolic ``--chmod``, platforms other than the host's. ``ADD`` of a local tar
archive (plain, gzip, bzip2, xz, zstd) is unpacked by the executor.
"""

from __future__ import annotations

from collections.abc import Mapping

from buildsvc.frontends.dockerfile.config import ImageConfigLike, ImageConfigResolver, Platform
from buildsvc.frontends.dockerfile.convert import DockerfileResult, decode_options, lower
from buildsvc.frontends.dockerfile.errors import DockerfileError
from buildsvc.frontends.dockerfile.memo import LoweringMemo
from buildsvc.frontends.dockerfile.parse import parse_dockerfile
from buildsvc.frontends.dockerfile.source import MAX_DOCKERFILE_BYTES, read_dockerfile

__all__ = [
    "MAX_DOCKERFILE_BYTES",
    "DockerfileError",
    "DockerfileResult",
    "ImageConfigLike",
    "ImageConfigResolver",
    "Platform",
    "build_definition",
    "read_dockerfile",
]

# A daemon asked for the same build again reuses its lowering (see memo.py for when it may).
_RECENT = LoweringMemo()


def build_definition(
    dockerfile: str,
    *,
    options: Mapping[str, str],
    resolver: ImageConfigResolver,
    context_name: str = "context",
) -> DockerfileResult:
    """Lower ``dockerfile`` to a definition of its target stage.

    ``options`` are the frontend's (``--opt``): ``target``, ``build-arg:NAME`` (value: the arg's
    value), ``filename`` (the name used in messages, default ``Dockerfile``) and ``platform``.
    ``context_name`` names the local source the build context comes from. Raises
    :class:`DockerfileError` for a malformed Dockerfile or option; errors of ``resolver`` pass through.
    """
    convert_options, filename = decode_options(options, "Dockerfile", context_name)

    def lowered(asking: ImageConfigResolver) -> DockerfileResult:
        return lower(parse_dockerfile(dockerfile, filename=filename), dockerfile, convert_options, asking)

    key = (dockerfile, tuple(sorted(options.items())), context_name)
    return _RECENT.lower(key, resolver, lowered)
