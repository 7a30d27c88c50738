"""A small client of the Confluent Schema Registry REST API: the three calls Tamiyo uses (stdlib only).

* ``POST /subjects/{subject}/versions`` registers a schema under a subject and answers its id;
* ``POST /subjects/{subject}`` looks a schema up under a subject (404 when it is not registered);
* ``GET /schemas/ids/{id}`` answers the schema of an id.

Any server of that API works: Confluent's own registry, or Apicurio Registry's ``/apis/ccompat/v7``.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: HTTP statuses worth retrying: the registry may answer them differently in a moment.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class RegistryError(Exception):
    """A failed registry call. ``status`` is None when no HTTP answer came (refused, time-out)."""

    def __init__(self, message: str, status: int | None = None, error_code: int | None = None,
                 permanent: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self._permanent = permanent

    @property
    def permanent(self) -> bool:
        """True when asking again cannot help (unknown id, refused credentials or certificate, bad request)."""
        if self._permanent is not None:
            return self._permanent
        return self.status is not None and self.status not in TRANSIENT_STATUSES


class RegistryClient:
    """Blocking calls with a time-out each and no retries (callers decide how long to keep trying).
    HTTPS verifies the server against the system's CAs, or ``ca_file`` when given."""

    def __init__(self, url: str, user_info: str = "", timeout_s: float = 5.0, ca_file: str = "") -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"schema registry URL {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._tls = ssl.create_default_context(cafile=ca_file or None) if parsed.scheme == "https" else None
        self._headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        if user_info:
            self._headers["Authorization"] = "Basic " + base64.b64encode(user_info.encode()).decode()

    def __repr__(self) -> str:  # never shows the credentials
        return f"RegistryClient({self.url!r}, auth={'Authorization' in self._headers})"

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` (Avro JSON) under ``subject``; the id, the same for the same schema."""
        answer = self._call("POST", f"/subjects/{_quote(subject)}/versions", {"schema": schema, "schemaType": "AVRO"})
        return int(answer["id"])

    def lookup(self, subject: str, schema: str) -> int | None:
        """The id of ``schema`` under ``subject``, or None when it is not registered there."""
        try:
            answer = self._call("POST", f"/subjects/{_quote(subject)}", {"schema": schema, "schemaType": "AVRO"})
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        return int(answer["id"])

    def schema_by_id(self, schema_id: int) -> str:
        """The schema (JSON text) of an id; RegistryError with status 404 when the id is unknown."""
        answer = self._call("GET", f"/schemas/ids/{int(schema_id)}")
        schema_type = answer.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise RegistryError(f"schema id {schema_id} is a {schema_type} schema, not Avro", 422)
        return str(answer["schema"])

    def subjects(self) -> list[str]:
        """Every subject the registry holds."""
        return [str(s) for s in self._call("GET", "/subjects")]  # type: ignore[union-attr]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
        where = f"{method} {self.url}{path}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._tls) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            message, code = _error_body(exc)
            raise RegistryError(f"{where}: HTTP {exc.code} {message}".rstrip(), exc.code, code) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out, bad certificate
            reason = getattr(exc, "reason", exc)
            untrusted = isinstance(reason, ssl.SSLCertVerificationError)
            raise RegistryError(f"{where}: {type(exc).__name__}: {reason}", permanent=untrusted or None) from None
        except ValueError as exc:  # an answer that is not JSON
            raise RegistryError(f"{where}: answer is not JSON: {exc}", 502) from None


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _error_body(exc: urllib.error.HTTPError) -> tuple[str, int | None]:
    """The registry's ``{"error_code", "message"}`` body, when it sent one."""
    try:
        body = json.loads(exc.read() or b"{}")
        return str(body.get("message", "")), body.get("error_code")
    except (ValueError, OSError, AttributeError):
        return str(exc.reason or ""), None
