"""trainguard: keeps the ML training jobs of different teams from harming each other."""

__version__ = "0.1.0"
