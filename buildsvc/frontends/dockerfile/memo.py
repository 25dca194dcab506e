"""Recent lowerings, reused when a Dockerfile is built again with the same inputs.

Lowering is a pure function of the Dockerfile's text, the frontend options, the context's name and
what the resolver answers for each base image; a daemon asked for the same build again (the no-op
rebuild) lowered the same 40-odd steps through the definition model's canonical encoding each time
(~40% of its Solve). A remembered lowering is reused only when every base image it resolved resolves
to the same pinned digest and the same config now: the resolver is asked again, with its own rules
(its cache, ``image-resolve-mode=pull``), in the order the lowering asked it, so a moved tag or a
changed config lowers afresh. Nothing else is read by a lowering (no files, no clock).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from buildsvc.frontends.dockerfile.config import ImageConfigLike, ImageConfigResolver, Platform
from buildsvc.frontends.dockerfile.convert import DockerfileResult

__all__ = ["LoweringMemo"]

_Answer = tuple[str, ImageConfigLike]
_Asked = tuple[str, Platform]


class _Recording:
    """A resolver that remembers what it was asked and answered, in order; answers known already
    (asked while checking a remembered lowering) are given again without asking twice.
    """

    def __init__(self, resolver: ImageConfigResolver, known: dict[_Asked, _Answer]) -> None:
        self.resolver = resolver
        self.known = known
        self.answers: list[tuple[_Asked, _Answer]] = []

    def resolve(self, ref: str, platform: Platform) -> _Answer:
        asked = (ref, platform)
        answer = self.known.get(asked)
        if answer is None:
            answer = self.resolver.resolve(ref, platform)
        self.answers.append((asked, answer))
        return answer


class LoweringMemo:
    """The ``size`` most recent lowerings, by inputs, each with the resolver answers it used."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[tuple[tuple[_Asked, _Answer], ...], DockerfileResult]] = (
            OrderedDict()
        )

    def lower(
        self,
        key: Hashable,
        resolver: ImageConfigResolver,
        lower: Callable[[ImageConfigResolver], DockerfileResult],
    ) -> DockerfileResult:
        """``lower(resolver)``, or the result it gave for ``key`` if the resolver still answers the same."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        known: dict[_Asked, _Answer] = {}
        if entry is not None:
            answers, result = entry
            for asked, (pinned, config) in answers:
                now = known[asked] = resolver.resolve(*asked)
                if now[0] != pinned or now[1] != config:
                    break
            else:
                return _fresh(result)
        recording = _Recording(resolver, known)
        result = lower(recording)
        with self._lock:
            self._entries[key] = (tuple(recording.answers), result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return _fresh(result)


def _fresh(result: DockerfileResult) -> DockerfileResult:
    # The definition is immutable; the image config is a plain dict a caller may change.
    return dataclasses.replace(result, image_config=copy.deepcopy(result.image_config))
