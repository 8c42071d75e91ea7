"""A tabular example: scikit-learn's breast-cancer data, a logistic regression served as ONNX on named features."""

from joules.apps.cancer.train import FEATURES, LABELS, train_cancer

__all__ = ["FEATURES", "LABELS", "train_cancer"]
