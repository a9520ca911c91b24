"""What a lifecycle asset reads: the upstream artifact version Dagster recorded, not whichever folder is latest."""

import dagster as dg


def recorded_version(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
                     upstream: dg.AssetsDefinition) -> str:
    """The ``version`` of ``upstream``'s latest materialization of this partition, as Dagster recorded it."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upstream.key, asset_partitions=[context.partition_key]), limit=1).records
    if not records:
        raise dg.Failure(f"{upstream.key.to_user_string()} has no materialization for {context.partition_key!r} yet: "
                         "materialize it first", allow_retries=False)
    return records[0].asset_materialization.metadata["version"].value
