"""Aggregator, key holder, audit store and transparency API. Never imported by `fedchurn.client`."""
