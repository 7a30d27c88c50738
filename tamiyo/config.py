"""One configuration object per process, built from the environment (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw not in (None, "") else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw not in (None, "") else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Topics:
    """Topic names; every name shares one configurable prefix."""

    prefix: str = "tamiyo"

    @property
    def topology(self) -> str:
        return f"{self.prefix}.topology"

    @property
    def health(self) -> str:
        return f"{self.prefix}.health"

    @property
    def outcomes(self) -> str:
        return f"{self.prefix}.outcomes"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def experience(self) -> str:
        return f"{self.prefix}.experience"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    def all(self) -> list[str]:
        return [self.topology, self.health, self.outcomes, self.commands, self.experience, self.deadletter]


@dataclass(frozen=True)
class KafkaSecurity:
    """Client security settings passed unchanged to every client (Faust, aiokafka, confluent-kafka)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    @classmethod
    def from_env(cls) -> "KafkaSecurity":
        return cls(
            protocol=_env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=_env("KAFKA_SASL_MECHANISM", ""),
            sasl_username=_env("KAFKA_SASL_USERNAME", ""),
            sasl_password=_env("KAFKA_SASL_PASSWORD", ""),
            ssl_cafile=_env("KAFKA_SSL_CAFILE", ""),
        )

    def confluent(self) -> dict[str, str]:
        """Settings for confluent-kafka (librdkafka names)."""
        conf = {"security.protocol": self.protocol}
        if self.sasl_mechanism:
            conf |= {
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password,
            }
        if self.ssl_cafile:
            conf["ssl.ca.location"] = self.ssl_cafile
        return conf

    def aiokafka(self) -> dict[str, object]:
        """Keyword arguments for aiokafka clients."""
        kwargs: dict[str, object] = {"security_protocol": self.protocol}
        if self.sasl_mechanism:
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if self.protocol.endswith("SSL"):
            import ssl

            kwargs["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile or None)
        return kwargs


@dataclass(frozen=True)
class SchemaRegistrySettings:
    """A Confluent-compatible schema registry; with a URL, producers write the Confluent wire format."""

    url: str = ""
    user_info: str = field(default="", repr=False)  # "user:password" for HTTP basic auth
    timeout_s: float = 5.0
    retry_s: float = 30.0
    ca_file: str = ""  # CA bundle for an https registry (default: the system's CAs)

    @classmethod
    def from_env(cls) -> "SchemaRegistrySettings":
        user_info = _env("TAMIYO_SCHEMA_REGISTRY_USER_INFO", "")
        user = _env("TAMIYO_SCHEMA_REGISTRY_USER", "")
        if user and user_info:
            raise ValueError("set TAMIYO_SCHEMA_REGISTRY_USER_INFO or TAMIYO_SCHEMA_REGISTRY_USER/PASSWORD, not both")
        if user:
            user_info = f"{user}:{_env('TAMIYO_SCHEMA_REGISTRY_PASSWORD', '')}"
        return cls(
            url=_env("TAMIYO_SCHEMA_REGISTRY_URL", ""),
            user_info=user_info,
            timeout_s=_env_float("TAMIYO_SCHEMA_REGISTRY_TIMEOUT_SECONDS", 5.0),
            retry_s=_env_float("TAMIYO_SCHEMA_REGISTRY_RETRY_SECONDS", 30.0),
            ca_file=_env("TAMIYO_SCHEMA_REGISTRY_CAFILE", ""),
        )

    def validate(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"TAMIYO_SCHEMA_REGISTRY_URL must be an http(s) URL, not {self.url!r}")
        if self.user_info and ":" not in self.user_info:
            raise ValueError("TAMIYO_SCHEMA_REGISTRY_USER_INFO must be user:password")
        if self.timeout_s <= 0 or self.retry_s < 0:
            raise ValueError("need TAMIYO_SCHEMA_REGISTRY_TIMEOUT_SECONDS > 0 and _RETRY_SECONDS >= 0")


@dataclass(frozen=True)
class Settings:
    """Every knob of every Tamiyo process. See the README's configuration table."""

    bootstrap_servers: str = ""
    broker: str = "auto"
    topic_prefix: str = "tamiyo"
    partitions: int = 4
    data_dir: Path = Path(".tamiyo")
    window_seconds: float = 10.0
    window_expires_seconds: float = 60.0
    policy: str = "heuristic"
    exploration_epsilon: float = 0.1
    confidence_threshold: float = 0.5
    cooldown_epochs: int = 2
    max_adaptations_per_epoch: int = 1
    policy_batch_max: int = 1024
    policy_batch_within_s: float = 0.005
    max_message_bytes: int = 1_000_000
    park_seconds: float = 120.0
    park_capacity: int = 100_000
    signal_wait_seconds: float = 1.0
    window_close_trigger: str = "on"
    window_close_grace_seconds: float = 2.0
    broker_session_timeout: float = 10.0
    fetch_max_wait_ms: int = 20
    stall_report_ms: float = 100.0
    recovery_stall_seconds: float = 60.0
    recovery_max_rejoins: int = 2
    torch_threads: int = 1
    dead_letter_value_bytes: int = 65_536
    mlflow_tracking_uri: str = ""
    registered_model: str = "tamiyo-policy"
    champion_poll_seconds: float = 3.0
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"
    log_level: str = "info"
    seed: int = 0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    schema_registry: SchemaRegistrySettings = field(default_factory=SchemaRegistrySettings)

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        data_dir = Path(_env("TAMIYO_DATA_DIR", ".tamiyo"))
        values: dict[str, object] = dict(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", ""),
            broker=_env("TAMIYO_BROKER", "auto"),
            topic_prefix=_env("TAMIYO_TOPIC_PREFIX", "tamiyo"),
            partitions=_env_int("TAMIYO_PARTITIONS", 4),
            data_dir=data_dir,
            window_seconds=_env_float("TAMIYO_WINDOW_SECONDS", 10.0),
            window_expires_seconds=_env_float("TAMIYO_WINDOW_EXPIRES_SECONDS", 60.0),
            policy=_env("TAMIYO_POLICY", "heuristic"),
            exploration_epsilon=_env_float("TAMIYO_EPSILON", 0.1),
            confidence_threshold=_env_float("TAMIYO_CONFIDENCE_THRESHOLD", 0.5),
            cooldown_epochs=_env_int("TAMIYO_COOLDOWN_EPOCHS", 2),
            max_adaptations_per_epoch=_env_int("TAMIYO_MAX_ADAPTATIONS_PER_EPOCH", 1),
            policy_batch_max=_env_int("TAMIYO_POLICY_BATCH_MAX", 1024),
            policy_batch_within_s=_env_float("TAMIYO_POLICY_BATCH_WITHIN_S", 0.005),
            max_message_bytes=_env_int("TAMIYO_MAX_MESSAGE_BYTES", 1_000_000),
            park_seconds=_env_float("TAMIYO_PARK_SECONDS", 120.0),
            park_capacity=_env_int("TAMIYO_PARK_CAPACITY", 100_000),
            signal_wait_seconds=_env_float("TAMIYO_SIGNAL_WAIT_SECONDS", 1.0),
            window_close_trigger=_env("TAMIYO_WINDOW_CLOSE_TRIGGER", "on"),
            window_close_grace_seconds=_env_float("TAMIYO_WINDOW_CLOSE_GRACE_SECONDS", 2.0),
            broker_session_timeout=_env_float("TAMIYO_BROKER_SESSION_TIMEOUT", 10.0),
            fetch_max_wait_ms=_env_int("TAMIYO_FETCH_MAX_WAIT_MS", 20),
            stall_report_ms=_env_float("TAMIYO_STALL_REPORT_MS", 100.0),
            recovery_stall_seconds=_env_float("TAMIYO_RECOVERY_STALL_SECONDS", 60.0),
            recovery_max_rejoins=_env_int("TAMIYO_RECOVERY_MAX_REJOINS", 2),
            torch_threads=_env_int("TAMIYO_TORCH_THREADS", 1),
            dead_letter_value_bytes=_env_int("TAMIYO_DEADLETTER_VALUE_BYTES", 65_536),
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", ""),
            registered_model=_env("TAMIYO_REGISTERED_MODEL", "tamiyo-policy"),
            champion_poll_seconds=_env_float("TAMIYO_CHAMPION_POLL_SECONDS", 3.0),
            metrics_port=_env_int("TAMIYO_METRICS_PORT", 0),
            metrics_addr=_env("TAMIYO_METRICS_ADDR", "127.0.0.1"),
            log_level=_env("TAMIYO_LOG_LEVEL", "info"),
            seed=_env_int("TAMIYO_SEED", 0),
            security=KafkaSecurity.from_env(),
            schema_registry=SchemaRegistrySettings.from_env(),
        )
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.broker not in ("auto", "kafka", "tansu"):
            raise ValueError(f"TAMIYO_BROKER must be auto, kafka or tansu, not {self.broker!r}")
        if self.policy not in ("heuristic", "untrained", "champion"):
            raise ValueError(f"TAMIYO_POLICY must be heuristic, untrained or champion, not {self.policy!r}")
        if not 0.0 <= self.exploration_epsilon <= 1.0:
            raise ValueError("TAMIYO_EPSILON must be in [0, 1]")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError("TAMIYO_CONFIDENCE_THRESHOLD must be in [0, 1]")
        if self.window_seconds <= 0 or self.window_expires_seconds < self.window_seconds:
            raise ValueError("need 0 < TAMIYO_WINDOW_SECONDS <= TAMIYO_WINDOW_EXPIRES_SECONDS")
        if self.window_close_trigger not in ("on", "off"):
            raise ValueError(f"TAMIYO_WINDOW_CLOSE_TRIGGER must be on or off, not {self.window_close_trigger!r}")
        if not 0 <= self.window_close_grace_seconds < self.window_expires_seconds:
            raise ValueError("need 0 <= TAMIYO_WINDOW_CLOSE_GRACE_SECONDS < TAMIYO_WINDOW_EXPIRES_SECONDS "
                             "(a window must still be kept when its close is acted on)")
        if self.partitions < 1:
            raise ValueError("TAMIYO_PARTITIONS must be >= 1")
        self.schema_registry.validate()
        if self.broker_session_timeout <= 0:
            raise ValueError("TAMIYO_BROKER_SESSION_TIMEOUT must be > 0 (brokers accept >= 6 s by default)")
        if self.torch_threads < 1:
            raise ValueError("TAMIYO_TORCH_THREADS must be >= 1")
        if self.fetch_max_wait_ms < 0:
            raise ValueError("TAMIYO_FETCH_MAX_WAIT_MS must be >= 0")
        if self.recovery_max_rejoins < 0:
            raise ValueError("TAMIYO_RECOVERY_MAX_REJOINS must be >= 0")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def worker_group(self) -> str:
        """The Faust workers' app id, which is also their consumer group."""
        return f"{self.topic_prefix}-worker"

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI, else a sqlite registry in the data folder."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"


def settings_from_args(args: object) -> Settings:
    """Settings from the environment plus the common ``--bootstrap`` / ``--prefix`` flags."""
    overrides: dict[str, object] = {}
    if getattr(args, "bootstrap", None):
        overrides["bootstrap_servers"] = getattr(args, "bootstrap")
    if getattr(args, "prefix", None):
        overrides["topic_prefix"] = getattr(args, "prefix")
    return Settings.from_env(**overrides)
