"""Screenshots of the Dagster and MLflow UIs for the README (run by scripts/screenshots, which starts both UIs):
the lifecycle's lineage, the job's runs, an eval_report materialization with its confusion matrix open, and MLflow
comparing the two newest model versions' runs."""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
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
    pages = {  # file: (URL, text to wait for, texts to click before the shot)
        "dagster-lineage.png": (f"{DAGSTER}/locations/distillery/asset-groups/lifecycle", "deployed_endpoint", []),
        "dagster-job-runs.png": (f"{DAGSTER}/locations/distillery/jobs/workload_lifecycle/runs", "support-triage", []),
        "dagster-eval-report.png": (f"{DAGSTER}/assets/eval_report?view=events&partition={WORKLOAD}",
                                    "plot_confusion_matrix", ["[Show Markdown]"]),
        "mlflow-compare-versions.png": (f"{MLFLOW}/#/compare-runs?runs=[{runs}]&experiments=[\"{experiment}\"]",
                                        "Visualizations", ["Visualizations", "Parameters"]),  # folded: the metrics show
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for name, (url, ready, clicks) in pages.items():
            page.goto(url)
            with contextlib.suppress(PlaywrightTimeout):  # Dagster's community sign-up dialog, on a first visit
                page.get_by_role("button", name="Skip").click(timeout=5_000)
            page.get_by_text(ready).first.wait_for(timeout=120_000)
            for text in clicks:
                page.get_by_text(text, exact=True).first.click()
            with contextlib.suppress(PlaywrightTimeout):  # MLflow's assistant panel would cover half the comparison
                page.get_by_role("button", name="Close").last.click(timeout=3_000) if name.startswith("mlflow") \
                    else None
            time.sleep(3)  # let the graph lay out and images decode
            page.screenshot(path=str(folder / name))
            print(f"{folder / name}: {url}")
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
