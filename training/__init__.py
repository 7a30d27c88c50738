"""Learning loop: replay the experience topic, learn offline, evaluate off-policy, register in MLflow."""
