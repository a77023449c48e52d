"""Tta, prediction, tiled slide inference, cascades."""
