"""Forecast Amazon EC2 Spot prices: ingest, grid, model, evaluate and serve.

Each stage lives in its own module. Importing the package does no work: TensorFlow, BentoML and
data files are only touched when a function that needs them is called.
"""

__version__ = "0.1.0"
