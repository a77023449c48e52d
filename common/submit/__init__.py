"""Submission formats, ensembles, pseudo-labels, the kaggle bundle, the leaderboard, the dataset-folder stages."""
