#!/usr/bin/env python3
"""Keys and tokens for benches/load/compare.sh.

    gen_tokens.py OUT_DIR ISSUER AUDIENCE COUNT

Writes to OUT_DIR:
  jwks.json          the RSA-2048 (kid rsa-1) and P-256 (kid ec-1) public keys
  rsa.pub.pem        the same keys as PEM public keys (HAProxy's jwt_verify)
  ec.pub.pem
  rs256.jwt          one valid RS256 token
  es256.jwt          one valid ES256 token
  badsig.jwt         RS256, kid rsa-1, signed by another RSA key: parses, fails only the signature
  expired.jwt        RS256, correctly signed, exp an hour ago
  wrongaud.jwt       RS256, correctly signed, aud not ours
  rs256-many.txt     COUNT distinct valid RS256 tokens (distinct jti and sub), one a line

Needs `cryptography` (compare.sh installs it in target/bench-venv).
"""

import base64
import json
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint_b64url(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return b64url(n.to_bytes(size, "big"))


def segment(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def sign_rs256(key: rsa.RSAPrivateKey, kid: str, claims: dict) -> str:
    signing_input = segment({"alg": "RS256", "typ": "JWT", "kid": kid}) + "." + segment(claims)
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def sign_es256(key: ec.EllipticCurvePrivateKey, kid: str, claims: dict) -> str:
    signing_input = segment({"alg": "ES256", "typ": "JWT", "kid": kid}) + "." + segment(claims)
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    # JWS wants the raw 64-byte R || S, not cryptography's DER.
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def pem(public_key) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def main() -> None:
    out, issuer, audience, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())

    rsa_pub = rsa_key.public_key().public_numbers()
    ec_pub = ec_key.public_key().public_numbers()
    jwks = {
        "keys": [
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
             "n": uint_b64url(rsa_pub.n), "e": uint_b64url(rsa_pub.e)},
            {"kty": "EC", "kid": "ec-1", "alg": "ES256", "use": "sig", "crv": "P-256",
             "x": uint_b64url(ec_pub.x, 32), "y": uint_b64url(ec_pub.y, 32)},
        ]
    }
    write(f"{out}/jwks.json", json.dumps(jwks))
    write(f"{out}/rsa.pub.pem", pem(rsa_key.public_key()))
    write(f"{out}/ec.pub.pem", pem(ec_key.public_key()))

    def claims(sub: str = "bench-user", **over) -> dict:
        c = {"iss": issuer, "aud": audience, "sub": sub, "scope": "read write",
             "iat": now, "exp": now + 30 * 86400}
        c.update(over)
        return c

    write(f"{out}/rs256.jwt", sign_rs256(rsa_key, "rsa-1", claims()))
    write(f"{out}/es256.jwt", sign_es256(ec_key, "ec-1", claims()))
    write(f"{out}/badsig.jwt", sign_rs256(impostor, "rsa-1", claims()))
    write(f"{out}/expired.jwt", sign_rs256(rsa_key, "rsa-1", claims(iat=now - 7200, exp=now - 3600)))
    write(f"{out}/wrongaud.jwt", sign_rs256(rsa_key, "rsa-1", claims(aud="someone-else")))
    with open(f"{out}/rs256-many.txt", "w") as f:
        for i in range(count):
            f.write(sign_rs256(rsa_key, "rsa-1", claims(sub=f"user-{i}", jti=f"bench-{i}")) + "\n")


if __name__ == "__main__":
    main()
