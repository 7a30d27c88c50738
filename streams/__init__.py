"""Streaming side: the Faust app and its agents, over a thin Kafka layer (``streams.kafka``)."""
