"""Shared, competition-agnostic core: codecs, metrics, post-processing, threshold search, folds."""

import os

# No import may reach the network (albumentations' update check, the Hugging Face hub).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
