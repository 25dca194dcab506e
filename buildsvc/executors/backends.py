"""The solver's FileBackend and LayerBackend ports, served by this package's file code."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

from buildsvc.executors.fileops import (
    ActionResult,
    FileOutputPlan,
    OpInput,
    apply_actions,
    plan_action_result,
    plan_file_op,
)
from buildsvc.executors.merge_diff import diff_into, merge_into
from buildsvc.solver.ops import FileOp

__all__ = ["LocalFileBackend", "LocalLayerBackend"]


class LocalFileBackend:
    """Applies file actions on mounted snapshot directories."""

    def output_bases(self, op: FileOp, n_inputs: int) -> Mapping[int, int | None]:
        """Output index -> the input its result starts from (``None``: scratch)."""
        return {p.output: p.base for p in plan_file_op(op, n_inputs) if p.output is not None}

    def apply(
        self,
        op: FileOp,
        output: int,
        root: Path,
        inputs: Sequence[Path | None],
        *,
        link_sources: bool = False,
    ) -> None:
        """Apply the chain of actions that makes ``output`` onto ``root``.

        ``link_sources``: ``inputs`` are never written again and ``root`` is committed as the actions
        leave it; a copy from an input then hard links its files (see ``FileBackend.apply``). Only for
        a chain of that one copy: with more actions, one could change a linked file in place.
        """
        plan = next(p for p in plan_file_op(op, len(inputs)) if p.output == output)
        link = link_sources and len(op.actions) == 1
        with ExitStack() as stack:
            self._run(op, plan, root, inputs, stack, link=link)

    def _run(
        self,
        op: FileOp,
        plan: FileOutputPlan,
        root: Path,
        inputs: Sequence[Path | None],
        stack: ExitStack,
        *,
        link: bool = False,
    ) -> None:
        roots: dict[OpInput | ActionResult, Path] = {}
        for source in plan.sources:
            if isinstance(source, OpInput):
                given = inputs[source.index]
                roots[source] = given if given is not None else self._scratch(stack)
            else:
                # A copy that reads an earlier action's result: build that result aside first.
                sub = plan_action_result(op, len(inputs), source.index)
                aside = self._scratch(stack)
                base = inputs[sub.base] if sub.base is not None else None
                if base is not None:
                    merge_into(aside, [base])
                self._run(op, sub, aside, inputs, stack)
                roots[source] = aside
        apply_actions(root, plan.actions, roots, link_sources=link)

    @staticmethod
    def _scratch(stack: ExitStack) -> Path:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="buildsvc-fileop-")))


class LocalLayerBackend:
    """Merges and diffs directory trees."""

    def merge_into(self, dest: Path, sources: Sequence[Path], *, link: bool = False) -> None:
        """Overlay ``sources`` onto ``dest`` in order (hard linking their files with ``link``)."""
        merge_into(dest, sources, link=link)

    def diff_into(self, dest: Path, lower: Path, upper: Path) -> None:
        """Write what ``upper`` changes relative to ``lower`` (deletions as whiteouts)."""
        diff_into(dest, lower, upper)
