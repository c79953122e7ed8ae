"""A ``rediss://`` broker: our transport (messages due later in Redis, a worker that survives a
Redis restart) and a checked certificate.

kombu's own transport connects to ``rediss://`` without checking the server's certificate when it
is given no TLS options (it logs a warning); our other Redis clients (redis-py from the same URL)
check it. Both now read the URL the same way: checked against the system's CAs unless the query
says otherwise (``ssl_ca_certs=...``, ``ssl_cert_reqs=none``).

Against a real Redis with TLS on: a ``redis-server`` on PATH built with TLS (Debian's is); the
bundled one is not, and then these tests skip.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from shared.broker_transport import DELAYED_KEY
from shared.config import Settings, broker_tls_options, get_settings
from shared.queue import create_celery_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> tuple[str, Path]:
    """``rediss://127.0.0.1:<port>/0`` of a Redis that speaks TLS only, and its certificate."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server on PATH")
    directory = tmp_path_factory.mktemp("tls-redis")
    cert, key = _self_signed(directory)
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"rediss://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(f"{url}?ssl_ca_certs={cert}", socket_timeout=2)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace")
                if "tls" in output.lower():
                    pytest.skip(f"{server} is built without TLS")
                raise AssertionError(f"redis-server with TLS did not start: {output}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server with TLS did not answer"
                time.sleep(0.1)
        yield url, cert
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def broker_url(monkeypatch: pytest.MonkeyPatch):
    def use(url: str) -> None:
        monkeypatch.setenv("AIC_REDIS_URL", url)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


def test_the_certificate_is_checked_by_default(tls_redis, broker_url) -> None:
    url, _cert = tls_redis
    broker_url(url)
    app = create_celery_app()
    with app.connection_for_write() as connection:
        assert type(connection.transport).__module__ == "shared.broker_transport"
        # The server's certificate is self-signed: not trusted by the system's CAs.
        with pytest.raises(Exception) as refused:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            connection.default_channel.client.ping()
        assert "certificate verify failed" in str(refused.value).lower(), refused.value


def test_with_the_servers_ca_tasks_and_delayed_messages_go_through_tls(tls_redis,
                                                                      broker_url) -> None:
    url, cert = tls_redis
    broker_url(f"{url}?ssl_ca_certs={cert}")
    app = create_celery_app()
    queue = f"test-tls-{uuid.uuid4().hex[:8]}"
    direct = redis.Redis.from_url(f"{url}?ssl_ca_certs={cert}")
    try:
        app.send_task("worker.tasks.export_to_target", args=["now"], queue=queue)
        app.send_task("worker.tasks.export_to_target", args=["later"], queue=queue,
                      countdown=60)
        # The one due now is on its queue; the one due later waits in the delayed set (our
        # transport, over TLS), not in a worker.
        assert direct.llen(queue) == 1
        assert any(member.startswith(queue.encode() + b"\n")
                   for member in direct.zrange(DELAYED_KEY, 0, -1))
    finally:
        for member in direct.zrange(DELAYED_KEY, 0, -1):
            if member.startswith(queue.encode() + b"\n"):
                direct.zrem(DELAYED_KEY, member)
        direct.delete(queue)
        direct.close()
        app.close()


def test_ssl_cert_reqs_none_is_taken_at_its_word(tls_redis, broker_url) -> None:
    url, _cert = tls_redis
    broker_url(f"{url}?ssl_cert_reqs=none")
    app = create_celery_app()
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        assert connection.default_channel.client.ping()


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", None),
    ("rediss://cache.example:6380/0", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
    ("rediss://cache.example:6380/0?ssl_cert_reqs=optional&ssl_ca_certs=/etc/ca.pem",
     {"ssl_cert_reqs": ssl.CERT_OPTIONAL, "ssl_ca_certs": "/etc/ca.pem"}),
    ("rediss://:pw@cache.example:6380/0?ssl_cert_reqs=NONE&ssl_certfile=/c&ssl_keyfile=/k",
     {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_certfile": "/c", "ssl_keyfile": "/k"}),
])
def test_tls_options_read_from_the_url(url: str, expected: dict | None) -> None:
    assert broker_tls_options(url) == expected


def test_a_wrong_certificate_setting_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="ssl_cert_reqs='sometimes' is not one of required, "
                                         "optional, none"):
        Settings(redis_url="rediss://cache.example:6380/0?ssl_cert_reqs=sometimes")
