"""Codecs and readers."""
