"""When Dagster's automation materializes each asset: on a signal, never on the clock alone.

A retrain starts when ``frontier_traffic`` updates (enough new frontier rows, or live monitoring
asked for it), at most once per ``RETRAIN_CRON`` period; each later step follows its upstream in
the same run. Live monitoring runs every ``MONITORING_CRON`` tick once a workload is deployed.
"""

import dagster as dg

RETRAIN_CRON = "0 2 * * *"
MONITORING_CRON = "0 * * * *"

retrain_when_signalled = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & dg.AutomationCondition.cron_tick_passed(RETRAIN_CRON).since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label(f"frontier_traffic updated, at most once per '{RETRAIN_CRON}' period")

follow_upstream = dg.AutomationCondition.eager()

# A version whose blocking check failed is never trained on (lifecycle._upstream refuses it too).
follow_checked_upstream = (follow_upstream & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label(
    "eager, once the upstream's blocking checks passed")

every_monitoring_tick = (
    dg.AutomationCondition.cron_tick_passed(MONITORING_CRON).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label(f"every '{MONITORING_CRON}' tick once deployed")

PORTFOLIO_CRON = "0 6 * * *"

# Not partitioned: any workload's new traffic signal, a new live-monitoring result, or the daily tick refreshes it.
on_new_traffic_or_daily = (
    (dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.cron_tick_passed(PORTFOLIO_CRON))
    .since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label(f"any workload's traffic or monitoring updated, or the daily '{PORTFOLIO_CRON}' tick")
