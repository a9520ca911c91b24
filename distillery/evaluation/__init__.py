"""Evaluation: is the fine-tuned model good enough, and what does it save?

Every model answers the held-out split (``comparison``, through the serving engine), scored
against the frontier's answers with task-aware metrics (``metrics``); the cut-over gate
(``gate``); the confidence cascade's calibration (``cascade``); both sides' latency and cost (``costs``); the choice
of the student among the candidates, on the validation split (``selection``); an optional pairwise LLM judge
(``judge``); the report's plots.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "comparison": ["evaluate", "EvalReport", "ModelScore", "Judge", "BASE", "CANDIDATE", "CHAMPION", "score_answers",
                   "row_agreement"],
    "selection": ["StudentFigures", "measure_student", "choose_student", "pair_figures"],
    "metrics": ["classification_metrics", "extraction_metrics", "free_text_metrics", "bootstrap_interval"],
    "gate": ["GatePolicy", "GateDecision", "ChampionComparison", "decide"],
    "costs": ["CostSettings", "CostComparison", "SideFigures", "compare_costs", "small_model_figures",
              "frontier_figures", "blended_usd_per_1k"],
    "judge": ["judge_pairwise", "pairwise_judge", "JudgeResult", "JudgeSettings", "JUDGE_API_KEY_VARIABLE"],
    "plots": ["confusion_matrix_png", "per_label_f1_png", "latency_and_cost_png", "metric_by_version_png",
              "coverage_curve_png"],
    "cascade": ["Calibration", "CascadeCheck", "choose", "check", "interval95"],
    "embeddings": ["encode", "cosine_similarities"],
})
