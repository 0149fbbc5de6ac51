"""Everything that runs on a device. Imports `fedchurn.shared`, never `fedchurn.server`.

Scoring and policy need numpy alone; update protection adds `cryptography`; training adds torch.
"""
