r"""Lower a parsed Dockerfile to a :class:`Definition`, as BuildKit's ``dockerfile2llb`` does.

The shape follows ``convert.go``: meta ``ARG``\s (before the first ``FROM``) are expanded into the
global args; every stage's ``FROM`` is expanded with them; the stages the target needs (through
``FROM <stage>``, ``COPY --from`` and ``RUN --mount=from=``) are found, their base images resolved
through the :class:`ImageConfigResolver` and pinned by digest; then those stages are dispatched in
file order, instruction by instruction, onto :mod:`buildsvc.solver.llb` states. Stages the target does
not need are neither resolved nor built.

The build context is one ``local://NAME`` source filtered by include patterns made of exactly the
paths that ``COPY``/``ADD`` and ``RUN --mount=type=bind`` read from it, so its cache key depends
only on those files. Those paths are known only once every stage is dispatched, while the copies need
the context's state (whose digest includes the patterns) up front; BuildKit breaks the cycle with a
mutable output. Our states are immutable values, so :func:`lower` runs the dispatch twice: once to
collect the paths, once with the filtered context. Dispatch is pure and resolutions are cached, so
the second run sees exactly what the first did.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from buildsvc.frontends.dockerfile.config import (
    ImageConfigLike,
    ImageConfigResolver,
    ImageSpec,
    Platform,
    host_platform,
    normalize_platform,
    parse_platform,
)
from buildsvc.frontends.dockerfile.errors import DockerfileError
from buildsvc.frontends.dockerfile.expand import ExpansionError, ShellLex
from buildsvc.frontends.dockerfile.mounts import (
    MountSpec,
    mount_from,
    parse_duration,
    parse_mount,
    parse_ports,
    parse_signal,
)
from buildsvc.frontends.dockerfile.parse import (
    Instruction,
    ParsedDockerfile,
    chomp_heredoc,
    heredoc_content,
    parse_flags,
    parse_heredoc_marker,
)
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition, Location, Range, SourceFile
from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import CacheOptions, CacheSharing, MountType, NetMode, Owner, normalize_image_ref

__all__ = ["ConvertOptions", "DockerfileResult", "decode_options", "lower"]

SCRATCH = "scratch"
DEFAULT_SHELL = ("/bin/sh", "-c")
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9-_.]*$")
_NETWORKS = {"default": NetMode.SANDBOX, "none": NetMode.NONE, "host": NetMode.HOST}


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerfileResult:
    """What the frontend produces."""

    definition: Definition
    """The build graph of the target stage, with the Dockerfile as its source file."""
    image_config: dict[str, Any]
    """The OCI image config of the target stage (``architecture``, ``os``, ``config``)."""
    target: str = ""
    """The stage built (its name, or ``stage-N``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConvertOptions:
    """Frontend options, decoded."""

    target: str = ""
    """Stage to build (default: the last one)."""
    build_args: Mapping[str, str] = field(default_factory=dict)
    platform: Platform
    """The platform built for (only the host's for now)."""
    host: Platform
    """The host's platform (``BUILDPLATFORM``)."""
    context_name: str = "context"


class _Bad(Exception):
    """An instruction is wrong; the dispatch loop adds the file and line."""


def _bad(message: str) -> NoReturn:
    raise _Bad(message)


@dataclass(slots=True, eq=False)
class _Stage:
    index: int
    name: str
    """Lowercased ``AS`` name, or ``""``."""
    display: str
    """``name`` or ``stage-N``: the prefix of step names."""
    from_ins: Instruction
    base_name: str = ""
    commands: list[Instruction] = field(default_factory=list)
    base: _Stage | None = None
    image_only: bool = False
    """A ``COPY --from=<image>`` source rather than a stage of the file."""
    cmd_total: int = 0
    cmd_index: int = 0
    dispatched: bool = False
    cmd_set: bool = False
    state: llb.State = field(default_factory=llb.scratch)
    image: ImageSpec | None = None
    pinned: str = ""


class _Lowering:
    """One dispatch of the whole file (see the module docstring for why there are two)."""

    def __init__(
        self,
        parsed: ParsedDockerfile,
        options: ConvertOptions,
        resolve: Callable[[str], tuple[str, ImageConfigLike]],
        context: llb.State,
    ) -> None:
        self.parsed = parsed
        self.filename = parsed.filename
        self.options = options
        self.resolve_image = resolve
        self.context = context
        self.lex = ShellLex(escape=parsed.escape)
        # Step names keep quotes and unknown variables as written, as BuildKit's do.
        self.name_lex = dataclasses.replace(self.lex, raw_quotes=True, skip_unset_env=True)
        self.stages: list[_Stage] = []
        self.by_name: dict[str, _Stage] = {}
        self.images: dict[str, _Stage] = {}
        self.global_args: dict[str, str] = {}
        self.ctx_paths: set[str] = set()
        self.ctx_users: list[Instruction] = []
        self.locations: dict[str, list[Range]] = {}
        self.current: Instruction | None = None

    # -- errors -------------------------------------------------------------------------------------

    def error(self, message: str, ins: Instruction | None = None) -> DockerfileError:
        at = ins or self.current
        if at is None:
            return DockerfileError(message, filename=self.filename)
        return DockerfileError(message, filename=self.filename, line=at.start_line, end_line=at.end_line)

    def expand(self, word: str, env: Mapping[str, str]) -> str:
        try:
            return self.lex.process_word(word, env)
        except ExpansionError as e:
            raise _Bad(str(e)) from None

    # -- stages -------------------------------------------------------------------------------------

    def split_stages(self) -> list[Instruction]:
        meta: list[Instruction] = []
        for ins in self.parsed.instructions:
            if ins.name == "from":
                self.stages.append(self.new_stage(ins, len(self.stages)))
            elif not self.stages:
                if ins.name != "arg":
                    raise self.error(
                        "no build stage in current context (the first instruction must be FROM or ARG)", ins
                    )
                meta.append(ins)
            else:
                self.stages[-1].commands.append(ins)
        if not self.stages:
            raise DockerfileError(
                "the Dockerfile contains no stages to build (no FROM)", filename=self.filename
            )
        return meta

    def new_stage(self, ins: Instruction, index: int) -> _Stage:
        args = ins.args
        name = ""
        if len(args) == 3 and args[1].lower() == "as":
            name = args[2].lower()
            if not _STAGE_NAME_RE.match(name):
                raise self.error(
                    f"invalid name for build stage: {args[2]!r}, "
                    "name can't start with a number or contain symbols",
                    ins,
                )
            if name in self.by_name:
                raise self.error(f"duplicate stage name {name!r}", ins)
        elif len(args) != 1:
            raise self.error("FROM requires either one or three arguments", ins)
        stage = _Stage(index=index, name=name, display=name or f"stage-{index}", from_ins=ins)
        if name:
            self.by_name[name] = stage
        return stage

    def build_global_args(self, meta: Sequence[Instruction]) -> None:
        o = self.options
        defaults = {
            "BUILDPLATFORM": str(o.host),
            "BUILDOS": o.host.os,
            "BUILDARCH": o.host.architecture,
            "BUILDVARIANT": o.host.variant,
            "TARGETPLATFORM": str(o.platform),
            "TARGETOS": o.platform.os,
            "TARGETARCH": o.platform.architecture,
            "TARGETVARIANT": o.platform.variant,
            "TARGETSTAGE": o.target or self.stages[-1].name or "default",
        }
        self.global_args = {k: o.build_args.get(k, v) for k, v in defaults.items()}
        for ins in meta:
            self.current = ins
            for key, value in self.arg_pairs(ins):
                if key in o.build_args:
                    self.global_args[key] = o.build_args[key]
                elif value is not None:
                    self.global_args[key] = self.expand_here(value, self.global_args)

    def expand_here(self, word: str, env: Mapping[str, str]) -> str:
        """Expand outside the dispatch loop, where errors need their line added here."""
        try:
            return self.expand(word, env)
        except _Bad as e:
            raise self.error(str(e)) from None

    def arg_pairs(self, ins: Instruction) -> list[tuple[str, str | None]]:
        self.no_flags(ins)
        if not ins.args:
            raise self.error("ARG requires at least one argument", ins)
        pairs: list[tuple[str, str | None]] = []
        for arg in ins.args:
            key, eq, value = arg.partition("=")
            if not key:
                raise self.error("ARG names can not be blank", ins)
            pairs.append((key, value if eq else None))
        return pairs

    def no_flags(self, ins: Instruction) -> None:
        try:
            parse_flags(ins, {})
        except ValueError as e:
            raise self.error(str(e), ins) from None

    def resolve_bases(self) -> None:
        for stage in self.stages:
            ins = stage.from_ins
            self.current = ins
            base = self.expand_here(ins.args[0], self.global_args)
            if not base:
                raise self.error(f"base name ({ins.args[0]}) should not be blank", ins)
            stage.base_name = base
            try:
                flags = parse_flags(ins, {"platform": str})
            except ValueError as e:
                raise self.error(str(e), ins) from None
            if "platform" in flags:
                text = self.expand_here(str(flags["platform"]), self.global_args)
                self.check_platform(text, ins)
            # Only earlier stages can be a base (as in BuildKit: names are registered in order).
            earlier = self.by_name.get(base)
            if earlier is not None and earlier.index < stage.index:
                stage.base = earlier
            total = 1 if base != SCRATCH and stage.base is None else 0
            total += sum(1 for c in stage.commands if c.name in ("add", "copy", "run", "workdir"))
            stage.cmd_total = total

    def check_platform(self, text: str, ins: Instruction | None) -> None:
        if not text:
            raise self.error("empty platform value", ins)
        try:
            wanted = parse_platform(text)
        except ValueError as e:
            raise self.error(str(e), ins) from None
        have = self.options.platform
        if (wanted.os, wanted.architecture) != (have.os, have.architecture) or (
            wanted.variant and have.variant and wanted.variant != have.variant
        ):
            raise self.error(
                f"platform {wanted} is not supported: this builder builds for {have} only (no emulation)", ins
            )

    def target_stage(self) -> _Stage:
        wanted = self.options.target.lower()
        if not wanted:
            return self.stages[-1]
        stage = self.by_name.get(wanted)
        if stage is None:
            names = ", ".join(s.name for s in self.stages if s.name) or "none"
            raise DockerfileError(
                f"target stage {self.options.target!r} could not be found (stages: {names})",
                filename=self.filename,
            )
        return stage

    def source_stage(self, ref: str, ins: Instruction, by_index: bool) -> _Stage:
        """The stage (or image) a ``--from`` names."""
        if by_index and ref.isdigit():
            index = int(ref)
            if index >= len(self.stages):
                raise self.error(f"invalid stage index {index}", ins)
            return self.stages[index]
        stage = self.by_name.get(ref.lower())
        if stage is not None:
            return stage
        image = self.images.get(ref)
        if image is None:
            image = _Stage(index=-1, name="", display="", from_ins=ins, base_name=ref, image_only=True)
            image.cmd_total = 0
            self.images[ref] = image
        return image

    def dependencies(self, stage: _Stage) -> list[_Stage]:
        deps: list[_Stage] = [stage.base] if stage.base else []
        for ins in stage.commands:
            self.current = ins
            if ins.name == "copy":
                for raw in ins.flags:
                    if raw.startswith("--from="):
                        ref = raw.removeprefix("--from=")
                        if self.expand_here(ref, {}) != ref:
                            raise self.error(
                                "variable expansion is not supported for --from, define a new stage with "
                                "FROM using ARG from global scope as a workaround",
                                ins,
                            )
                        deps.append(self.source_stage(ref, ins, by_index=True))
            elif ins.name == "run":
                for raw in ins.flags:
                    if raw.startswith("--mount="):
                        try:
                            ref = mount_from(raw.removeprefix("--mount="))
                        except ValueError as e:
                            raise self.error(str(e), ins) from None
                        if ref:
                            deps.append(self.source_stage(ref, ins, by_index=False))
        return deps

    def reachable(self, target: _Stage) -> list[_Stage]:
        seen: dict[int, _Stage] = {}
        stack = [target]
        while stack:
            stage = stack.pop()
            if id(stage) in seen:
                continue
            seen[id(stage)] = stage
            stack.extend(self.dependencies(stage))
        return list(seen.values())

    def load_base(self, stage: _Stage) -> None:
        """Resolve a stage's base image and pin it (``FROM <stage>`` is handled at dispatch)."""
        if stage.base is not None:
            return
        platform = self.options.platform
        if stage.base_name == SCRATCH:
            stage.state = llb.scratch()
            stage.image = ImageSpec.from_base(platform, None)
            return
        ins = stage.from_ins
        try:
            ref = normalize_image_ref(stage.base_name)
        except ValueError as e:
            raise self.error(f"failed to parse stage name {stage.base_name!r}: {e}", ins) from None
        digest, config = self.resolve_image(ref)
        pinned = ref if "@" in ref else f"{ref}@{digest}"
        stage.pinned = pinned
        stage.image = ImageSpec.from_base(platform, config)
        name = self.step_name(stage, f"FROM {pinned}")
        stage.state = self.mark(llb.image(pinned, name=name), ins)

    # -- step names and locations ---------------------------------------------------------------------

    def step_name(self, stage: _Stage, text: str) -> str:
        if stage.cmd_total == 0:
            return text
        stage.cmd_index += 1
        width = len(str(stage.cmd_total))
        return f"[{stage.display} {stage.cmd_index:>{width}}/{stage.cmd_total}] {text}"

    def display_text(self, ins: Instruction, env: Mapping[str, str]) -> str:
        # A heredoc's body is not part of the step name (BuildKit shows the first line).
        original = ins.original.split("\n", 1)[0] if ins.heredocs else ins.original
        try:
            text = self.name_lex.process_word(original, env)
        except ExpansionError:
            text = original
        keyword, sep, rest = text.partition(" ")
        return keyword.upper() + sep + rest

    def mark(self, state: llb.State, ins: Instruction) -> llb.State:
        edge = state.output
        if edge is not None:
            ranges = self.locations.setdefault(edge.digest, [])
            r = Range(start_line=ins.start_line, end_line=ins.end_line)
            if r not in ranges:
                ranges.append(r)
        return state

    # -- dispatch -------------------------------------------------------------------------------------

    def run(self) -> _Stage:
        meta = self.split_stages()
        self.build_global_args(meta)
        self.resolve_bases()
        target = self.target_stage()
        needed = self.reachable(target)
        for stage in sorted(needed, key=lambda s: (s.image_only, s.index)):
            self.current = stage.from_ins
            self.load_base(stage)
        wanted = {id(s) for s in needed}
        for stage in self.stages:
            if id(stage) in wanted:
                self.dispatch_stage(stage)
        return target

    def dispatch_stage(self, stage: _Stage) -> None:
        if stage.base is not None:
            base = stage.base
            assert base.image is not None
            stage.state = base.state
            stage.image = base.image.clone()
            stage.image.onbuild = []
        else:
            assert stage.image is not None
            image = stage.image
            if not any(e.partition("=")[0] == "PATH" for e in image.env):
                image.env.append(f"PATH={llb.DEFAULT_PATH}")
            state = stage.state
            for entry in image.env:
                key, _, value = entry.partition("=")
                if key:
                    state = state.with_env(key, value)
            if image.working_dir:
                image.working_dir = posixpath.normpath(posixpath.join("/", image.working_dir))
                state = state.with_cwd(image.working_dir)
            if image.user:
                state = state.with_user(image.user)
            stage.state = state
        stage.dispatched = True
        for ins in stage.commands:
            self.current = ins
            try:
                self.dispatch(stage, ins)
            except DockerfileError:
                raise
            except (_Bad, ValueError, DefinitionError) as e:
                reason = e.reason if isinstance(e, DefinitionError) else str(e)
                raise self.error(reason, ins) from None

    def dispatch(self, stage: _Stage, ins: Instruction) -> None:
        handler = getattr(self, f"do_{ins.name}")
        handler(stage, ins)

    @staticmethod
    def image_of(stage: _Stage) -> ImageSpec:
        assert stage.image is not None
        return stage.image

    def key_values(self, stage: _Stage, ins: Instruction, what: str) -> list[tuple[str, str]]:
        parse_flags(ins, {})
        if not ins.args:
            _bad(f"{what} requires at least one argument")
        if len(ins.args) % 2:
            _bad(f"Bad input to {what}, too many arguments")
        env = stage.state.env
        pairs: list[tuple[str, str]] = []
        for i in range(0, len(ins.args), 2):
            key = self.expand(ins.args[i], env)
            if not key:
                _bad(f"{what} names can not be blank")
            pairs.append((key, self.expand(ins.args[i + 1], env)))
        return pairs

    def do_env(self, stage: _Stage, ins: Instruction) -> None:
        # Every value is expanded with the environment from before the instruction (as BuildKit).
        for key, value in self.key_values(stage, ins, "ENV"):
            stage.state = stage.state.with_env(key, value)
            self.image_of(stage).set_env(key, value)

    def do_label(self, stage: _Stage, ins: Instruction) -> None:
        for key, value in self.key_values(stage, ins, "LABEL"):
            self.image_of(stage).labels[key] = value

    def do_arg(self, stage: _Stage, ins: Instruction) -> None:
        build_args = self.options.build_args
        for key, default in self.arg_pairs(ins):
            value: str | None
            if key in build_args:
                value = build_args[key]
            elif default is not None:
                value = self.expand(default, stage.state.env)
            else:
                # A bare ARG in a stage brings in the meta arg of that name, if there is one.
                value = self.global_args.get(key)
            if value is not None:
                # ARGs are in the environment of RUN steps, never in the image's config.
                stage.state = stage.state.with_env(key, value)

    def do_maintainer(self, stage: _Stage, ins: Instruction) -> None:
        parse_flags(ins, {})
        if len(ins.args) != 1:
            _bad("MAINTAINER requires exactly one argument")
        self.image_of(stage).author = ins.args[0]

    def one_arg(self, stage: _Stage, ins: Instruction, what: str) -> str:
        parse_flags(ins, {})
        if len(ins.args) != 1:
            _bad(f"{what} requires exactly one argument")
        return self.expand(ins.args[0], stage.state.env)

    def do_workdir(self, stage: _Stage, ins: Instruction) -> None:
        path = self.one_arg(stage, ins, "WORKDIR")
        image = self.image_of(stage)
        workdir = posixpath.normpath(posixpath.join("/", image.working_dir or "/", path))
        if workdir.startswith("//"):
            workdir = "/" + workdir.lstrip("/")
        image.working_dir = workdir
        env = stage.state.env
        stage.state = stage.state.with_cwd(workdir)
        if workdir != "/":
            name = self.step_name(stage, self.display_text(ins, env))
            actions = llb.mkdir(workdir, 0o755, make_parents=True, owner=image.user or None)
            stage.state = self.mark(stage.state.file(actions, name=name), ins)

    def do_user(self, stage: _Stage, ins: Instruction) -> None:
        user = self.one_arg(stage, ins, "USER")
        stage.state = stage.state.with_user(user)
        self.image_of(stage).user = user

    def do_stopsignal(self, stage: _Stage, ins: Instruction) -> None:
        self.image_of(stage).stop_signal = parse_signal(self.one_arg(stage, ins, "STOPSIGNAL"))

    def do_expose(self, stage: _Stage, ins: Instruction) -> None:
        parse_flags(ins, {})
        if not ins.args:
            _bad("EXPOSE requires at least one argument")
        image = self.image_of(stage)
        for raw in sorted(ins.args):
            try:
                words = self.lex.process_words(raw, stage.state.env)
            except ExpansionError as e:
                raise _Bad(str(e)) from None
            for word in words:
                for port in parse_ports(word):
                    image.exposed_ports[port] = None

    def do_volume(self, stage: _Stage, ins: Instruction) -> None:
        parse_flags(ins, {})
        if not ins.args:
            _bad("VOLUME requires at least one argument")
        for raw in ins.args:
            volume = self.expand(raw.strip(), stage.state.env)
            if not volume:
                _bad("VOLUME specified can not be an empty string")
            self.image_of(stage).volumes[volume] = None

    def do_shell(self, stage: _Stage, ins: Instruction) -> None:
        parse_flags(ins, {})
        if not ins.args:
            _bad("SHELL requires at least one argument")
        if not ins.json:
            _bad(f"SHELL requires the arguments to be in JSON form: {ins.original}")
        self.image_of(stage).shell = list(ins.args)

    def with_shell(self, stage: _Stage, args: Sequence[str]) -> list[str]:
        shell = self.image_of(stage).shell or list(DEFAULT_SHELL)
        return [*shell, " ".join(args)]

    def do_cmd(self, stage: _Stage, ins: Instruction) -> None:
        parse_flags(ins, {})
        image = self.image_of(stage)
        image.cmd = list(ins.args) if ins.json else self.with_shell(stage, ins.args)
        stage.cmd_set = True

    def do_entrypoint(self, stage: _Stage, ins: Instruction) -> None:
        parse_flags(ins, {})
        image = self.image_of(stage)
        if ins.json:
            image.entrypoint = list(ins.args) or None
        else:
            image.entrypoint = self.with_shell(stage, ins.args)
        # A new entrypoint drops the base image's CMD unless this stage set one (as Docker does).
        if not stage.cmd_set:
            image.cmd = None

    def do_healthcheck(self, stage: _Stage, ins: Instruction) -> None:
        if not ins.args:
            _bad("HEALTHCHECK requires at least one argument")
        kind = ins.args[0].upper()
        rest = list(ins.args[1:])
        if kind == "NONE":
            parse_flags(ins, {})
            if rest:
                _bad("HEALTHCHECK NONE takes no arguments")
            self.image_of(stage).healthcheck = {"Test": ["NONE"]}
            return
        flags = parse_flags(
            ins,
            {"interval": str, "timeout": str, "start-period": str, "start-interval": str, "retries": str},
        )
        if kind != "CMD":
            _bad(f'Unknown type "{ins.args[0]}" in HEALTHCHECK (try CMD)')
        if not rest or (len(rest) == 1 and not rest[0]):
            _bad("Missing command after HEALTHCHECK CMD")
        check: dict[str, Any] = {"Test": ["CMD", *rest] if ins.json else ["CMD-SHELL", " ".join(rest)]}
        for flag, key in (
            ("interval", "Interval"),
            ("timeout", "Timeout"),
            ("start-period", "StartPeriod"),
            ("start-interval", "StartInterval"),
        ):
            if flag in flags:
                nanos = parse_duration(str(flags[flag]))
                if 0 < nanos < 1_000_000:
                    _bad(f'Interval "{flag}" cannot be less than 1ms')
                if nanos:
                    check[key] = nanos
        if "retries" in flags:
            try:
                retries = int(str(flags["retries"]))
            except ValueError:
                _bad(f"invalid --retries value {flags['retries']!r}")
            if retries < 0:
                _bad(f"--retries cannot be negative ({retries})")
            if retries:
                check["Retries"] = retries
        self.image_of(stage).healthcheck = check

    def do_onbuild(self, stage: _Stage, ins: Instruction) -> None:
        _bad("ONBUILD is not supported yet")

    # -- RUN --------------------------------------------------------------------------------------------

    def do_run(self, stage: _Stage, ins: Instruction) -> None:
        flags = parse_flags(ins, {"mount": list, "network": str})
        env = stage.state.env
        args = list(ins.args)
        display = self.display_text(ins, env)
        mounts: list[llb.RunMount] = []
        if ins.heredocs:
            args, extra, summary = self.run_heredoc(stage, ins)
            mounts.extend(extra)
            display += f" ({summary})"
        elif not args or (len(args) == 1 and not args[0].strip() and not ins.json):
            _bad("RUN requires at least one argument")
        if not ins.json:
            args = self.with_shell(stage, args)
        raw_mounts = flags.get("mount", [])
        assert isinstance(raw_mounts, list)
        for raw in raw_mounts:
            mounts.append(self.run_mount(stage, ins, parse_mount(raw, lambda v: self.expand(v, env))))
        network = str(flags.get("network", "default"))
        if network not in _NETWORKS:
            _bad(f'invalid network mode "{network}" (expected default, none or host)')
        name = self.step_name(stage, display)
        ran = stage.state.run(args, mounts=mounts, network=_NETWORKS[network], name=name)
        stage.state = self.mark(ran.root(), ins)

    def run_heredoc(self, stage: _Stage, ins: Instruction) -> tuple[list[str], list[llb.RunMount], str]:
        args = list(ins.args)
        marker = parse_heredoc_marker(args[0]) if len(args) == 1 else None
        if marker is None:
            # Several heredocs, or one inside a longer command: hand the whole text to the shell.
            text = args[0] if args else ""
            for doc in ins.heredocs:
                text += "\n" + doc.content + doc.name
            return [text], [], _summarize(ins.heredocs[0].content)
        data = heredoc_content(ins, marker.name) or ""
        if marker.chomp:
            data = chomp_heredoc(data)
        summary = _summarize(data)
        if not data.startswith("#!"):
            return [data], [], summary
        # A script with a shebang runs as a file, from a read-only mount (as BuildKit does).
        script = llb.scratch().file(
            llb.mkfile(f"/{marker.name}", data, 0o755), name="[internal] preparing inline document"
        )
        self.mark(script, ins)
        mount = llb.bind(script, "/dev/pipes/", readonly=True, selector="/")
        return [f"/dev/pipes/{marker.name}"], [mount], summary

    def run_mount(self, stage: _Stage, ins: Instruction, spec: MountSpec) -> llb.RunMount:
        if spec.type in ("secret", "ssh"):
            _bad(f"RUN --mount=type={spec.type} is not supported yet")
        target = spec.target
        if not target.startswith("/"):
            target = posixpath.join("/", stage.state.cwd, target)
        target = posixpath.normpath(target)
        if target in ("/", "//"):
            _bad(f"invalid mount target {spec.target!r}")
        selector = posixpath.normpath(posixpath.join("/", spec.source))
        selector = "" if selector in ("/", "//") else selector
        if spec.type == "tmpfs":
            return llb.tmpfs(target, size=spec.size)
        source: llb.State
        if spec.from_:
            src_stage = self.source_stage(spec.from_, ins, by_index=False)
            if not src_stage.dispatched and not src_stage.image_only:
                _bad(
                    f"cannot mount from stage {spec.from_!r} to {spec.target!r}, "
                    "stage needs to be defined before current command"
                )
            source = src_stage.state
        elif spec.type == "cache":
            source = llb.scratch()
        else:
            source = self.context
            self.use_context(spec.source or "/", ins)
        if spec.type == "cache":
            if not selector and (spec.uid is not None or spec.gid is not None or spec.mode is not None):
                # The cache directory's owner and mode come from a prepared /cache (as in BuildKit).
                prepared = source.file(
                    llb.mkdir(
                        "/cache",
                        0o755 if spec.mode is None else spec.mode,
                        owner=Owner(user=spec.uid or 0, group=spec.gid or 0),
                    ),
                    name="[internal] setting cache mount permissions",
                )
                source = self.mark(prepared, ins)
                selector = "/cache"
            cache_id = spec.id or posixpath.normpath(spec.target)
            return llb.RunMount(
                dest=target,
                type=MountType.CACHE,
                source=None if source.is_scratch else source,
                selector=selector,
                readonly=spec.readonly,
                cache=CacheOptions(id=cache_id, sharing=CacheSharing(spec.sharing or "shared")),
            )
        return llb.bind(source, target, readonly=spec.readonly, selector=selector)

    # -- COPY and ADD -------------------------------------------------------------------------------

    def use_context(self, src: str, ins: Instruction) -> None:
        path = posixpath.normpath(posixpath.join("/", src))
        self.ctx_paths.add("/" + path.lstrip("/"))
        if all(i is not ins for i in self.ctx_users):
            self.ctx_users.append(ins)

    def do_copy(self, stage: _Stage, ins: Instruction) -> None:
        self.copy_or_add(stage, ins, is_add=False)

    def do_add(self, stage: _Stage, ins: Instruction) -> None:
        self.copy_or_add(stage, ins, is_add=True)

    def copy_or_add(self, stage: _Stage, ins: Instruction, *, is_add: bool) -> None:
        what = "ADD" if is_add else "COPY"
        spec: dict[str, type] = {"chown": str, "chmod": str, "link": bool, "exclude": list}
        spec.update(
            {"keep-git-dir": bool, "checksum": str, "unpack": bool}
            if is_add
            else {"from": str, "parents": bool}
        )
        flags = parse_flags(ins, spec)
        if len(ins.args) < 2:
            _bad(
                f"{what} requires at least two arguments, but only one was provided. "
                "Destination could not be determined"
            )
        if flags.get("parents"):
            _bad("COPY --parents is not supported yet")
        if "keep-git-dir" in flags:
            _bad("ADD --keep-git-dir is not supported yet (git sources are not supported)")
        env = stage.state.env
        raw_sources, raw_dest = list(ins.args[:-1]), ins.args[-1]
        if parse_heredoc_marker(raw_dest):
            _bad(f"{what} cannot accept a heredoc as a destination")
        dest = self.copy_dest(stage, self.expand(raw_dest, env))
        chown = self.expand(str(flags.get("chown", "")), env)
        mode = _chmod(self.expand(str(flags.get("chmod", "")), env))
        excludes = flags.get("exclude", [])
        assert isinstance(excludes, list)
        checksum = str(flags.get("checksum", ""))
        unpack = flags.get("unpack")
        owner = chown or None
        display = self.display_text(ins, env)

        source_stage: _Stage | None = None
        if "from" in flags:
            source_stage = self.source_stage(str(flags["from"]), ins, by_index=True)
            if not source_stage.dispatched and not source_stage.image_only:
                _bad(
                    f"cannot copy from stage {flags['from']!r}, it needs to be defined before current stage "
                    f"{stage.display!r}"
                )

        files: list[tuple[str, str]] = []  # heredoc sources: (name, data)
        paths: list[str] = []
        for raw in raw_sources:
            marker = parse_heredoc_marker(raw)
            if marker is not None:
                data = heredoc_content(ins, marker.name) or ""
                if marker.chomp:
                    data = chomp_heredoc(data)
                if marker.expand:
                    data = _expand_raw(data, env)
                files.append((marker.name, data))
            else:
                paths.append(self.expand(raw, env))
        if len(paths) + len(files) > 1 and not dest.endswith("/"):
            _bad(
                f"When using {what} with more than one source file, "
                "the destination must be a directory and end with a /"
            )
        if checksum:
            if len(paths) != 1 or not _is_url(paths[0]):
                _bad("checksum requires exactly one HTTP(S) source")
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
                _bad(f"invalid checksum {checksum!r}: expected sha256:<64 lowercase hex>")

        name = self.step_name(stage, display)
        actions: llb.FileActions | None = None

        def then(source: llb.State, src: str, **kw: Any) -> None:
            nonlocal actions
            start = actions.copy if actions is not None else llb.copy
            actions = start(
                source, src, dest, owner=owner, mode=mode, create_dest_path=True, exclude=excludes, **kw
            )

        for src in paths:
            if _is_url(src):
                if not is_add:
                    _bad("source can't be a URL for COPY")
                if _is_git(src):
                    _bad("git sources are not supported yet")
                filename = (
                    posixpath.basename(
                        src.split("?", 1)[0].split("#", 1)[0].rstrip("/").split("://", 1)[1].partition("/")[2]
                    )
                    or "__unnamed__"
                )
                remote = llb.https(src, filename=filename, checksum=checksum or None, name=name)
                self.mark(remote, ins)
                then(remote, f"/{filename}", attempt_unpack=bool(unpack))
                continue
            if source_stage is None:
                if _escapes(src):
                    _bad(f"{what} source {src!r} is outside the build context")
                self.use_context(src, ins)
                source = self.context
            else:
                source = source_stage.state
            then(
                source,
                posixpath.normpath(posixpath.join("/", src)),
                follow_symlinks=True,
                dir_contents_only=True,
                attempt_unpack=is_add if unpack is None else bool(unpack),
                allow_wildcard=True,
                allow_empty_wildcard=True,
            )
        for doc_name, data in files:
            inline = llb.scratch().file(
                llb.mkfile(f"/{doc_name}", data, 0o644), name="[internal] preparing inline document"
            )
            self.mark(inline, ins)
            then(inline, f"/{doc_name}")
        assert actions is not None
        # --link is accepted and copies as a plain COPY does; the layer it makes is the same.
        stage.state = self.mark(stage.state.file(actions, name=name), ins)

    def copy_dest(self, stage: _Stage, dest: str) -> str:
        if dest in ("", "."):
            dest = "./"
        keep_slash = dest.endswith("/") or dest.endswith("/.")
        joined = posixpath.normpath(posixpath.join("/", stage.state.cwd, dest))
        joined = "/" + joined.lstrip("/")
        return joined + "/" if keep_slash and joined != "/" else joined


def _escapes(src: str) -> bool:
    """Whether a context path climbs out of the context with ``..``."""
    return posixpath.normpath(src.lstrip("/") or ".").split("/")[0] == ".."


def _is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def _is_git(src: str) -> bool:
    base = src.split("#", 1)[0].split("?", 1)[0]
    return base.endswith(".git") or src.startswith("git@") or src.startswith("git://")


def _chmod(text: str) -> int | None:
    if not text:
        return None
    try:
        value = int(text, 8)
    except ValueError:
        if re.fullmatch(r"[0-9]+", text):
            value = -1
        else:
            raise _Bad(f"invalid chmod parameter: {text!r}: only octal modes are supported yet") from None
    if not 0 <= value <= 0o7777:
        raise _Bad(f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777")
    return value


def _expand_raw(data: str, env: Mapping[str, str]) -> str:
    # Heredoc bodies expand variables but keep quotes (BuildKit's ExpandRaw).
    try:
        return ShellLex(skip_process_quotes=True).process_word(data, env)
    except ExpansionError as e:
        raise _Bad(str(e)) from None


def _summarize(doc: str) -> str:
    lines = doc.strip().splitlines()
    if not lines:
        return ""
    return lines[0] + ("..." if len(lines) > 1 else "")


def lower(
    parsed: ParsedDockerfile,
    source: str,
    options: ConvertOptions,
    resolver: ImageConfigResolver,
) -> DockerfileResult:
    """Lower ``parsed`` (the text of which is ``source``) for ``options``."""
    cache: dict[str, tuple[str, ImageConfigLike]] = {}

    def resolve(ref: str) -> tuple[str, ImageConfigLike]:
        if ref not in cache:
            cache[ref] = resolver.resolve(ref, options.platform)
        return cache[ref]

    ctx_name = options.context_name
    first = _Lowering(parsed, options, resolve, llb.local(ctx_name))
    first.run()
    include = _include_patterns(first.ctx_paths)
    context = llb.local(
        ctx_name,
        include=include or None,
        shared_key_hint=ctx_name,
        name="[internal] load build context",
    )
    second = _Lowering(parsed, options, resolve, context)
    target = second.run()
    if context.output is not None and second.ctx_users:
        for ins in second.ctx_users:
            second.mark(context, ins)
    image = second.image_of(target)
    try:
        marshalled = target.state.marshal()
    except DefinitionError as e:
        raise DockerfileError(e.reason, filename=parsed.filename) from e
    locations = {
        digest: (Location(file=0, ranges=tuple(ranges)),)
        for digest, ranges in second.locations.items()
        if digest in marshalled.vertices
    }
    definition = Definition(
        vertices=marshalled.vertices,
        output=marshalled.output,
        metadata=marshalled.metadata,
        source_files=(SourceFile(filename=parsed.filename, data=source.encode(), language="Dockerfile"),),
        locations=locations,
    )
    definition.validate()
    return DockerfileResult(definition=definition, image_config=image.to_json(), target=target.display)


def _include_patterns(paths: set[str]) -> list[str]:
    """The local source's include patterns: every path read from the context, or none for all."""
    if not paths or "/" in paths:
        return []
    return sorted(p.lstrip("/") for p in paths)


def decode_options(
    options: Mapping[str, str], filename_default: str, context_name: str
) -> tuple[ConvertOptions, str]:
    """Decode the frontend's string options; returns the options and the Dockerfile's name."""
    host = host_platform()
    build_args: dict[str, str] = {}
    for key, value in options.items():
        if key.startswith("build-arg:"):
            name = key.removeprefix("build-arg:")
            if not name:
                raise DockerfileError("option build-arg: needs a name (build-arg:NAME=VALUE)")
            build_args[name] = value
    filename = options.get("filename") or filename_default
    platform = host
    text = options.get("platform", "")
    if text:
        if "," in text:
            raise DockerfileError(
                f"option platform={text}: building for several platforms is not supported yet",
                filename=filename,
            )
        try:
            platform = parse_platform(text)
        except ValueError as e:
            raise DockerfileError(f"option platform: {e}", filename=filename) from None
        if (platform.os, platform.architecture) != (host.os, host.architecture):
            raise DockerfileError(
                f"option platform={text}: this builder builds for {host} only (no emulation)",
                filename=filename,
            )
        platform = normalize_platform(
            Platform(os=host.os, architecture=host.architecture, variant=platform.variant)
        )
    return (
        ConvertOptions(
            target=options.get("target", ""),
            build_args=build_args,
            platform=platform,
            host=host,
            context_name=context_name,
        ),
        filename,
    )
