"""Chest X-ray anatomy on JSRT images with SCR masks (second competition)."""
