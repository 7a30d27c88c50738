"""Hot-swap: poll the registry's ``champion`` alias off the event loop and swap validated versions."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from streams.policy_holder import PolicyHolder, ServingPolicy

log = logging.getLogger(__name__)


class ChampionPoller(threading.Thread):
    """Every ``interval_s``: resolve the alias; if it moved, download, validate and swap atomically.

    A version that fails validation is refused (and not retried until the alias moves again); one
    whose download fails is tried again at the next poll; a registry that does not answer is logged
    once per outage. The current policy keeps serving meanwhile.
    """

    def __init__(self, registry: Any, holder: PolicyHolder, interval_s: float, cache_dir: Path,
                 metrics: Any = None) -> None:
        super().__init__(daemon=True, name="champion-poller")
        self.registry = registry
        self.holder = holder
        self.interval_s = interval_s
        self.cache_dir = cache_dir
        self.metrics = metrics
        self.refused: set[str] = set()
        self.outage = False
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    def poll_once(self) -> bool:
        """One poll; True when a new version was swapped in."""
        try:
            ref = self.registry.champion()
        except Exception as exc:  # the registry is down or unreachable: keep serving
            if not self.outage:
                log.warning("registry unavailable, serving %s: %s", self.holder.serving.version, exc)
            self.outage = True
            if self.metrics is not None:
                self.metrics.registry_errors.inc()
            return False
        if self.outage:
            log.info("registry reachable again")
            self.outage = False
        if ref is None:
            return False
        version_string = self.registry.version_string(ref.version)
        if version_string == self.holder.serving.version or ref.version in self.refused:
            return False
        from models.checkpoint import IncompatiblePolicyError  # torch: loaded by now in a champion worker

        try:
            policy = self.registry.load(ref.version, self.cache_dir / f"v{ref.version}")
        except IncompatiblePolicyError as exc:
            self.refused.add(ref.version)
            log.error("refused %s: %s; still serving %s", version_string, exc, self.holder.serving.version)
            return False
        except Exception as exc:  # the download failed (network, registry, disk): try again next poll
            log.warning("could not fetch %s (%s: %s); still serving %s, retrying in %.0f s", version_string,
                        type(exc).__name__, exc, self.holder.serving.version, self.interval_s)
            if self.metrics is not None:
                self.metrics.registry_errors.inc()
            return False
        self.holder.swap(ServingPolicy(policy, version_string))
        if self.metrics is not None:
            self.metrics.hot_swaps.inc()
        return True
