"""One valid sample record per schema, shared by the tests."""

from __future__ import annotations

SAMPLES: dict[str, dict] = {
    "HealthSignal": {
        "model_id": "m-1", "run_id": "run-1", "layer_name": "layers.0", "epoch": 3, "step": 120,
        "timestamp_ms": 1_700_000_000_000, "health_score": 0.8, "activation_variance": 0.5,
        "dead_neuron_ratio": 0.1, "avg_correlation": 0.2, "gradient_norm": 0.03,
        "execution_latency_ms": 0.4, "error_count": 0, "active_seeds": 1, "total_seeds": 2,
        "seed_states": ["TRAINING", "DORMANT"],
    },
    "HealthReport": {
        "model_id": "m-1", "run_id": "run-1",
        "signals": [
            {"model_id": "m-1", "run_id": "run-1", "layer_name": name, "epoch": 3, "step": 120,
             "timestamp_ms": 1_700_000_000_000, "health_score": 0.8, "activation_variance": 0.5,
             "dead_neuron_ratio": 0.1, "avg_correlation": 0.2, "gradient_norm": 0.03,
             "execution_latency_ms": 0.4, "error_count": 0, "active_seeds": 1, "total_seeds": 2,
             "seed_states": ["TRAINING", "DORMANT"]}
            for name in ("layers.0", "layers.1")
        ],
    },
    "HealthBatch": {
        "model_id": "m-1", "run_id": "run-1", "layer_names": ["layers.0", "layers.1"],
        "epoch": [3, 3], "step": [120, 140], "timestamp_ms": [1_700_000_000_000, 1_700_000_002_000],
        "health_score": [0.8, 0.7, 0.75, 0.6], "activation_variance": [0.5, 0.4, 0.5, 0.3],
        "dead_neuron_ratio": [0.1, 0.0, 0.1, 0.2], "avg_correlation": [0.2, -0.1, 0.2, 0.0],
        "gradient_norm": [0.03, 0.02, 0.03, 0.01], "execution_latency_ms": [0.4, 0.3, 0.4, 0.5],
        "error_count": [0, 0, 1, 0], "active_seeds": [1, 0, 1, 1], "total_seeds": [2, 2, 2, 2],
        "seed_states": ["TRAINING", "DORMANT", "DORMANT", "DORMANT", "TRAINING", "DORMANT", "BLENDING", "DORMANT"],
    },
    "ModelTopology": {
        "model_id": "m-1", "run_id": "run-1", "timestamp_ms": 1_700_000_000_000,
        "layers": [
            {"name": "layers.0", "layer_type": "KasminaLayer", "input_size": 64, "output_size": 32,
             "parameter_count": 2080, "num_seeds": 2},
            {"name": "layers.1", "layer_type": "KasminaLayer", "input_size": 32, "output_size": 10,
             "parameter_count": 330, "num_seeds": 2},
        ],
        "edges": [{"source": "layers.0", "target": "layers.1"}],
    },
    "EpochOutcome": {
        "model_id": "m-1", "run_id": "run-1", "epoch": 3, "timestamp_ms": 1_700_000_000_000,
        "train_loss": 0.7, "val_loss": 0.8, "train_accuracy": 0.75, "val_accuracy": 0.7,
        "parameter_count": 2410, "final": False, "last_report_step": None,
    },
    "CommandOutcome": {
        "decision_id": "d-1", "model_id": "m-1", "run_id": "run-1", "epoch": 3,
        "timestamp_ms": 1_700_000_000_000, "status": "APPLIED", "reason": "", "parameter_delta": 200,
        "action": "GERMINATE", "layer_name": "layers.0", "seed_index": 1, "kernel": "mlp_small",
    },
    "AdaptationCommand": {
        "decision_id": "d-1", "model_id": "m-1", "epoch": 3, "timestamp_ms": 1_700_000_000_000,
        "action": "GERMINATE", "layer_name": "layers.0", "seed_index": 1, "kernel": "mlp_small",
        "policy_version": "heuristic-v1", "probability": 0.25,
    },
    "DecisionRecord": {
        "decision_id": "d-1", "model_id": "m-1", "run_id": "run-1", "epoch": 3,
        "timestamp_ms": 1_700_000_000_000, "trigger": "epoch_end", "policy_version": "heuristic-v1",
        "action": "WAIT", "layer_name": None, "seed_index": None, "kernel": None, "action_index": 0,
        "propensity": 0.5, "distribution": [0.5, 0.25, 0.25], "kernels": ["mlp_small", "mlp_wide"],
        "value_estimate": 0.0, "gate": "none", "feature_names": ["health_mean"],
        "layer_names": ["layers.0"], "node_features": [[0.5]], "edge_source": [], "edge_target": [],
        "legal_mask": b"\x01\x01\x01",
    },
    "DeadLetter": {
        "reason": "random bytes", "error_kind": "bad_header", "source_topic": "tamiyo.health",
        "partition": 0, "offset": 7, "timestamp_ms": 1_700_000_000_000, "key": b"m-1",
        "value": b"\x00\x01", "value_size": 2,
    },
}
