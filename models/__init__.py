"""Policy, graph and host-model code: pure torch/numpy, no Kafka, Faust or MLflow."""
