"""What a lifecycle asset reads: the upstream artifact version Dagster recorded, not whichever folder is latest."""

import dagster as dg


def latest_materialization(instance: dg.DagsterInstance, asset: dg.AssetsDefinition,
                           partition: str) -> dg.EventLogRecord | None:
    """The record of ``asset``'s latest materialization of ``partition``, or None when it has none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[partition]), limit=1).records
    return records[0] if records else None


def recorded_version(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
                     upstream: dg.AssetsDefinition) -> str:
    """The ``version`` of ``upstream``'s latest materialization of this partition, as Dagster recorded it."""
    record = latest_materialization(context.instance, upstream, context.partition_key)
    if record is None:
        raise dg.Failure(f"{upstream.key.to_user_string()} has no materialization for {context.partition_key!r} yet: "
                         "materialize it first", allow_retries=False)
    return record.asset_materialization.metadata["version"].value
