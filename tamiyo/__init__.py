"""Tamiyo: process entry points (CLI, configuration, embedded brokers, demo)."""
