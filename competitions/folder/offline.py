"""What a dataset folder's Kaggle notebook runs (``common.submit.kaggle``): ``common.stages``."""

from common.stages import predict_folder_submission as predict_submission

__all__ = ["predict_submission"]
