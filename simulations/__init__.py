"""Synthetic populations, scenarios, runners, reports and benchmarks for fedchurn simulations."""
