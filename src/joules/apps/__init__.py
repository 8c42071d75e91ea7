"""Applications built on joules; the flagship is the spam detector."""
