"""API conformance of a running asclepios deployment, with schemathesis.

Each service's served /openapi.json drives property-based requests, sent
over mutual TLS with the identity's client certificate and signed the way
every asclepios client signs (RFC 9421, Ed25519, the certificate's key), so
they reach the handlers. Checks: no 5xx, every status and content type is
one the document declares, every body matches its declared schema.

Run by scripts/api-conformance.sh, which starts the deployment and sets:
  ASCLEPIOS_DIR        the deployment directory
  ASCLEPIOS_AUTHORITY  https://localhost:PORT of the key authority
  ASCLEPIOS_RECORDS    https://localhost:PORT of the record service
  ASCLEPIOS_AS         identities to send as, comma-separated
  ASCLEPIOS_EXAMPLES   examples per operation and identity
"""

import base64
import hashlib
import os
import secrets
import time

import tempfile

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

DIR = os.environ["ASCLEPIOS_DIR"]
SERVICES = {
    "authority": os.environ["ASCLEPIOS_AUTHORITY"],
    "records": os.environ["ASCLEPIOS_RECORDS"],
}
# Each service's TLS name: what a signature's @authority must be.
TLS_NAMES = {
    "authority": os.environ.get("ASCLEPIOS_AUTHORITY_NAME", "authority.asclepios.internal"),
    "records": os.environ.get("ASCLEPIOS_RECORDS_NAME", "records.asclepios.internal"),
}


def audience(url: str) -> str:
    """The TLS name of the service a request goes to."""
    for service, base in SERVICES.items():
        if url.startswith(base):
            return TLS_NAMES[service]
    raise ValueError(f"{url} is at neither service")
IDENTITIES = os.environ.get("ASCLEPIOS_AS", "dr-heart").split(",")
EXAMPLES = int(os.environ.get("ASCLEPIOS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


KEYS = tempfile.mkdtemp(prefix="asclepios-conformance-")


def identity_key(identity: str):
    """The identity's Ed25519 key, and a copy of it as PKCS#8 v1 for TLS.

    asclepios writes PKCS#8 v2 (RFC 5958: the public key included), which
    Python's cryptography and OpenSSL's PEM loader here do not read; the seed
    is the same.
    """
    with open(os.path.join(DIR, "identities", identity + ".key")) as f:
        pem = "".join(line for line in f if not line.startswith("-----"))
    der = base64.b64decode(pem)
    marker = bytes.fromhex("04220420")
    at = der.index(marker) + len(marker)
    key = Ed25519PrivateKey.from_private_bytes(der[at : at + 32])
    path = os.path.join(KEYS, identity + ".key")
    with open(path, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key, path


class SigningSession(requests.Session):
    """A mutual-TLS session that signs every request as the identity."""

    def __init__(self, identity: str):
        super().__init__()
        self.key, key_path = identity_key(identity)
        self.cert = (os.path.join(DIR, "identities", identity + ".pem"), key_path)
        self.verify = os.path.join(DIR, "pki", "ca.pem")
        # Only the deployment's CA: no CA bundle or proxy from the environment.
        self.trust_env = False
        self.identity = identity

    def send(self, request, **kwargs):
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        digest = "sha-256=:" + b64(hashlib.sha256(body).digest()) + ":"
        params = (
            '("@method" "@authority" "@path" "content-digest")'
            f";created={int(time.time())};keyid=\"{self.identity}\""
            f';nonce="{secrets.token_hex(16)}";alg="ed25519"'
        )
        base = (
            f'"@method": {request.method.upper()}\n'
            f'"@authority": {audience(request.url)}\n'
            f'"@path": {request.path_url}\n'
            f'"content-digest": {digest}\n'
            f'"@signature-params": {params}'
        )
        request.headers["Content-Digest"] = digest
        request.headers["Signature-Input"] = "sig1=" + params
        request.headers["Signature"] = "sig1=:" + b64(self.key.sign(base.encode())) + ":"
        return super().send(request, **kwargs)


def load(service: str):
    with SigningSession(IDENTITIES[0]) as s:
        document = s.get(SERVICES[service] + "/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(document)


authority = load("authority")
records = load("records")
SESSIONS = {who: SigningSession(who) for who in IDENTITIES}
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("ASCLEPIOS_DERANDOMIZE") == "1",
    suppress_health_check=list(HealthCheck),
)


def call_and_check(service: str, case, who: str):
    session = SESSIONS[who]
    response = case.call(
        base_url=SERVICES[service], session=session, verify=session.verify, timeout=60
    )
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("who", IDENTITIES)
@authority.parametrize()
@SETTINGS
def test_key_authority(case, who):
    call_and_check("authority", case, who)


@pytest.mark.parametrize("who", IDENTITIES)
@records.parametrize()
@SETTINGS
def test_record_service(case, who):
    call_and_check("records", case, who)
