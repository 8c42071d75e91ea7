"""The flagship: an SMS spam detector fine-tuned from all-MiniLM-L6-v2."""

from joules.apps.spam.dataset import DEFAULT_DATA, load_messages, split_messages

__all__ = ["DEFAULT_DATA", "load_messages", "split_messages"]
