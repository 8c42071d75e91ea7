"""The e-mail spam detector: raw RFC 822 messages, trained on the SpamAssassin public corpus."""

from joules.apps.mail.dataset import DEFAULT_DATA, Corpus, Mail, load_corpus, split_corpus

__all__ = ["DEFAULT_DATA", "Corpus", "Mail", "load_corpus", "split_corpus"]
