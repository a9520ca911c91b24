import dagster as dg

# One partition per workload, added by the new-workload sensor from the log store.
workload_partitions = dg.DynamicPartitionsDefinition(name="workload")
