"""Serving: batch (files), online (HTTP) and stream (brokers), all through one Predictor."""
