"""Post-processing, metrics, threshold and slide search, the tile filter."""
