"""The context store's usage and what a prune removed from it, on the wire and back."""

from __future__ import annotations

from buildsvc.api import convert
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.daemon.usage import ContextsPruned, ContextStoreUsage, PruneSkipped, UsageRecord


def test_disk_usage_carries_the_context_store() -> None:
    record = UsageRecord(
        snapshot_id="s", worker="w", snapshotter="overlayfs", parent="", kind="view", state="committed",
        size_bytes=3, active_refs=1,
    )  # fmt: skip
    contexts = ContextStoreUsage(manifests=2, blobs=5, blob_bytes=500, trees=1, tree_bytes=400)
    message = convert.disk_usage_to_pb([record], contexts)
    back = convert.disk_usage_from_pb(pb.DiskUsageResponse.FromString(message.SerializeToString()))
    assert back.snapshots == (record,) and back.contexts == contexts
    # From a daemon that predates the field: an empty store, not an error.
    old = convert.disk_usage_from_pb(pb.DiskUsageResponse(records=[convert.usage_to_pb(record)]))
    assert old.contexts == ContextStoreUsage(manifests=0, blobs=0, blob_bytes=0, trees=0, tree_bytes=0)


def test_a_prune_streams_what_went_from_the_context_store() -> None:
    pruned = ContextsPruned(
        manifests=("sha256:" + "a" * 64,), blobs_removed=3, trees_removed=1, bytes_reclaimed=1234
    )
    skipped = PruneSkipped(snapshot_id="s", worker="w", reason="in use")
    for result in (pruned, skipped):
        message = convert.prune_result_to_pb(result)
        assert (
            convert.prune_result_from_pb(pb.PruneResponse.FromString(message.SerializeToString())) == result
        )
