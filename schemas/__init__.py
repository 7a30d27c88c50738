"""Wire contract: Avro schemas (``avro/*.avsc``) and the single-object codec."""

from schemas.codec import (
    DecodeError,
    Decoded,
    decode,
    decode_as,
    encode,
    fingerprint_of,
    registry,
)

__all__ = ["DecodeError", "Decoded", "decode", "decode_as", "encode", "fingerprint_of", "registry"]
