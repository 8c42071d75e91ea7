"""An image classifier: scikit-learn's handwritten digits, served on PNG/JPEG files of any size."""

from joules.apps.digits.train import LABELS, train_digits

__all__ = ["LABELS", "train_digits"]
