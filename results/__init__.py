"""distilnas.results: Pareto fronts, exports, reports and plots."""
