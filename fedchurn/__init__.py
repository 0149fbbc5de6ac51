"""fedchurn: privacy-preserving, federated, on-device churn scoring.

The parts are sub-packages mapped from the repository's top-level folders:
`fedchurn.shared` (contracts), `fedchurn.client` (the device), `fedchurn.server` (aggregator, key
holder, transparency API) and `fedchurn.simulations` (synthetic populations, runs, benchmarks).
"""

__version__ = "0.1.0"
