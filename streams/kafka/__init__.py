"""Thin wrappers over the Kafka clients; everything above speaks Tamiyo terms."""
