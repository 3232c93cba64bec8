"""facekd: distil large face-recognition teachers into compact students, evaluate, export, register."""

__version__ = "0.1.0"
