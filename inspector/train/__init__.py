"""Training toolchain (the `train` extra): data sets, models, training, evaluation and export.

The only part of `inspector` that may import torch; the daemon never imports this package.
"""
