"""Screenshots of the Dagster and MLflow UIs for the README (run by scripts/screenshots, which starts both UIs)."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from distillery.training import Tracker, registered_model_name

DAGSTER, MLFLOW = "http://127.0.0.1:3000", "http://127.0.0.1:5001"
WORKLOAD = "support-triage"
# Chromium as root, offline: no sandbox, and none of the background connections this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def wait_for(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wait_for(f"{DAGSTER}/server_info")
    wait_for(f"{MLFLOW}/health")
    tracker = Tracker()
    versions = sorted(tracker.client.search_model_versions(f"name='{registered_model_name(WORKLOAD)}'"),
                      key=lambda v: int(v.version))[-2:]
    if len(versions) < 2:
        raise SystemExit("run scripts/demo twice first: the MLflow comparison needs two model versions")
    experiment = tracker.client.get_run(versions[-1].run_id).info.experiment_id
    runs = ",".join(f'"{v.run_id}"' for v in versions)
    pages = {
        "dagster-lineage.png": (f"{DAGSTER}/asset-groups", "text=eval_report"),
        "dagster-eval-report.png": (f"{DAGSTER}/assets/eval_report?partition={WORKLOAD}&view=events",
                                    "text=plot_confusion_matrix"),
        "mlflow-compare-versions.png": (f"{MLFLOW}/#/compare-runs?runs=[{runs}]&experiments=[\"{experiment}\"]",
                                        "text=eval_headline"),
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for name, (url, ready) in pages.items():
            page.goto(url)
            page.wait_for_selector(ready, timeout=120_000)
            time.sleep(3)  # let the graph lay out and images decode
            page.screenshot(path=str(folder / name))
            print(f"{folder / name}: {url}")
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
