"""Contracts that both the device (`fedchurn.client`) and the server (`fedchurn.server`) import.

Everything here is importable with numpy alone, so a phone-side port can mirror it.
"""
