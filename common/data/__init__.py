"""Datasets, loaders, samplers, folds, tiles, crops, the plan."""
