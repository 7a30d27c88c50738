"""Kasmina hosts: the real digits trainer, the simulated fleet, and what they share."""
