"""PNG figures for the evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402


def confusion_matrix_png(confusion: dict[str, dict[str, int]], path: Path) -> Path:
    """Rows: the frontier's label; columns: the model's answer (labels outside the set get a column too)."""
    rows = sorted(confusion)
    columns = rows + sorted({answer for counts in confusion.values() for answer in counts} - set(rows))
    grid = [[confusion[r].get(c, 0) for c in columns] for r in rows]
    size = max(4.0, 0.3 * len(columns) + 2)
    figure, axes = plt.subplots(figsize=(size, max(3.5, 0.3 * len(rows) + 2)))
    image = axes.imshow(grid, cmap="Blues")
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(rows)), rows, fontsize=7)
    axes.set_xlabel("model answer")
    axes.set_ylabel("frontier answer")
    figure.colorbar(image, ax=axes, shrink=0.7)
    return _save(figure, path)


def per_label_f1_png(per_label: dict[str, float], path: Path) -> Path:
    labels = sorted(per_label, key=per_label.get)
    figure, axes = plt.subplots(figsize=(6, max(2.5, 0.22 * len(labels) + 1)))
    axes.barh(labels, [per_label[label] for label in labels], color="#4C72B0")
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1 against the frontier")
    axes.tick_params(axis="y", labelsize=7)
    return _save(figure, path)


def latency_and_cost_png(operations, path: Path) -> Path:
    """Frontier against fine-tuned: latency p50/p95 and cost per 1,000 requests (a ``costs.CostComparison``)."""
    sides = [operations.frontier, operations.small_model]
    names = [side.name for side in sides]
    figure, (latency, cost) = plt.subplots(1, 2, figsize=(8, 3.2))
    for offset, (label, values) in enumerate((("p50", [s.latency_ms_p50 for s in sides]),
                                              ("p95", [s.latency_ms_p95 for s in sides]))):
        latency.bar([i + 0.38 * offset for i in range(len(sides))], [v or 0 for v in values], width=0.38, label=label)
    latency.set_xticks([i + 0.19 for i in range(len(sides))], names)
    latency.set_ylabel("latency (ms)")
    latency.legend()
    cost.bar(names, [s.usd_per_1k_requests or 0 for s in sides], color=["#C44E52", "#55A868"])
    cost.set_ylabel("USD per 1,000 requests")
    return _save(figure, path)


def metric_by_version_png(history: list[tuple[str, float]], metric: str, path: Path) -> Path:
    """The headline metric of each registered model version, oldest first."""
    figure, axes = plt.subplots(figsize=(max(4.0, 0.5 * len(history) + 2), 3))
    axes.plot([f"v{version}" for version, _ in history], [value for _, value in history], marker="o")
    axes.axhline(1.0, color="grey", linestyle=":", label="frontier")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(metric)
    axes.set_xlabel("model version")
    axes.legend(loc="lower right")
    return _save(figure, path)


def coverage_curve_png(calibration, path: Path) -> Path:
    """A ``cascade.Calibration``: agreement on the covered rows (and its lower 95% bound) against coverage, on the
    validation rows the threshold was chosen on and on the test rows; the chosen operating point and the bound
    it had to hold."""
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for name, curve, style in (("validation", calibration.validation_curve, "-"),
                               ("test", calibration.test_curve, "--")):
        if curve:
            coverage = [point.coverage for point in curve]
            axes.plot(coverage, [point.agreement for point in curve], style, label=f"{name}: agreement")
            axes.plot(coverage, [point.agreement_low for point in curve], style, alpha=0.5,
                      label=f"{name}: lower 95% bound")
    axes.axhline(calibration.required_low, color="grey", linestyle=":", label="required lower bound")
    if calibration.test:
        axes.plot([calibration.test.coverage], [calibration.test.covered_agreement], "o", color="black",
                  label=f"threshold {calibration.cascade.threshold:.3g} on test")
    axes.set_xlim(0, 1.02)
    axes.set_xlabel("coverage (share of calls the small model answers alone)")
    axes.set_ylabel("agreement with the frontier")
    axes.legend(fontsize=7, loc="lower left")
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
