"""Static security checks over the package source (used by tests/test_security.py and the chaos report).

* No unsafe deserialisation on any data path: no pickle-family imports, ``torch.load`` only with
  ``weights_only=True``, no ``numpy.load(allow_pickle=True)``, no ``yaml.load`` without a safe loader.
* Every Kafka client the package builds takes its settings from the one ``KafkaSecurity`` (through
  ``streams.kafka.clients.base_config`` or ``KafkaSecurity.aiokafka()`` / ``broker_credentials``); the
  only exception is the embedded broker's readiness probe, which talks plain text to 127.0.0.1.

MLflow credentials are not handled by Tamiyo at all: the MLflow client reads
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``) from the
environment of the process, and child processes inherit it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "models", "streams", "training", "hosts", "tamiyo")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
KAFKA_CLIENTS = {"Producer", "Consumer", "AdminClient", "SerializingProducer", "DeserializingConsumer",
                 "AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
SECURITY_MARKERS = ("base_config(", "security.aiokafka(", "security.confluent(", "broker_credentials(")
# The embedded broker's readiness probe: plain text to a broker this process just started on 127.0.0.1.
CLIENT_ALLOWLIST = {("tamiyo/broker/apache.py", "wait_for_kafka")}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def source_files(root: Path = REPO, packages: Iterable[str] = PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py") if ".venv" not in p.parts)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_deserialization(path: Path, root: Path = REPO) -> list[Finding]:
    """Unsafe deserialisation in one file."""
    rel = str(path.relative_to(root))
    tree = ast.parse(path.read_text(), filename=rel)
    out: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    out.append(Finding(rel, node.lineno, f"imports {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            out.append(Finding(rel, node.lineno, f"imports from {node.module}"))
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name == "torch.load" or name.endswith(".torch.load"):
                if not _is_true(_kw(node, "weights_only")):
                    out.append(Finding(rel, node.lineno, "torch.load without weights_only=True"))
            elif name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
                out.append(Finding(rel, node.lineno, "numpy.load with allow_pickle=True"))
            elif name == "yaml.load":
                loader = _kw(node, "Loader")
                if loader is None or "Safe" not in _name(loader):
                    out.append(Finding(rel, node.lineno, "yaml.load without a safe Loader"))
            elif name.endswith("read_pickle") or name.endswith("mlflow.pytorch.load_model"):
                out.append(Finding(rel, node.lineno, f"{name} deserialises pickle"))
    return out


def scan_kafka_clients(path: Path, root: Path = REPO) -> list[Finding]:
    """Kafka clients built without the shared security settings."""
    rel = str(path.relative_to(root))
    text = path.read_text()
    tree = ast.parse(text, filename=rel)
    out: list[Finding] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _name(node.func).split(".")[-1] not in KAFKA_CLIENTS:
            continue
        owner = min((f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)),
                    key=lambda f: (f.end_lineno or f.lineno) - f.lineno, default=None)
        scope = ast.get_source_segment(text, owner) if owner is not None else text
        if (rel, getattr(owner, "name", "")) in CLIENT_ALLOWLIST:
            continue
        if not any(marker in (scope or "") for marker in SECURITY_MARKERS):
            out.append(Finding(rel, node.lineno, f"{_name(node.func)} built without the KafkaSecurity settings"))
    return out


def scan(root: Path = REPO) -> dict[str, list[str]]:
    files = source_files(root)
    return {
        "unsafe_deserialization": [str(f) for p in files for f in scan_deserialization(p, root)],
        "kafka_clients_without_security": [str(f) for p in files for f in scan_kafka_clients(p, root)],
    }


def summary() -> dict[str, object]:
    """What the chaos report says about security (static checks; the tests cover the behaviour)."""
    findings = scan()
    return {
        "pickle_free": not findings["unsafe_deserialization"],
        "findings": findings,
        "files_scanned": len(source_files()),
        "kafka_security": "one KafkaSecurity (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CAFILE) feeds "
                          "confluent-kafka (base_config), aiokafka (KafkaSecurity.aiokafka) and Faust "
                          "(streams.factory.broker_credentials)",
        "mlflow_credentials": "read by MLflow itself from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                              "(or MLFLOW_TRACKING_TOKEN); never stored by Tamiyo",
        "message_size_limit": "TAMIYO_MAX_MESSAGE_BYTES: larger values are dead-lettered as 'oversized' "
                              "(scenario bad_input)",
        "schema_registry": "not implemented (optional): messages use Avro single-object encoding with "
                           "fingerprints resolved against the schemas shipped in the package",
    }
