"""Fleet: every workload at once; what each costs and saves, and which call site to move next (``portfolio``)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "portfolio": ["build_portfolio", "PortfolioSettings", "WorkloadLine", "portfolio_records", "portfolio_markdown",
                  "portfolio_text", "spend_png"],
})
