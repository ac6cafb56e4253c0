"""TLS to Redis: with a `rediss://` URL every client speaks TLS and verifies the server's certificate — this
process's client and Celery producer, a Celery worker, the web process's pages (their Redis health check) and its
dashboard socket (the live hub's subscription).

No TLS Redis runs on this machine and the redis-server wheel is built without TLS, so the test puts a
TLS-terminating proxy (the `ssl` module, with a certificate authority made for the test) in front of a plain
redis-server of its own: what the product's clients see is a Redis that speaks only TLS.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading

import httpx
import pytest
import redis
import websockets.sync.client
from celery import current_app

from core import bus
from core.events import broadcast
from tests.conftest import RedisServer, free_port, redis_for_everything, session_cookie, wait_for

pytestmark = pytest.mark.e2e


def make_certificates(directory):
    """A certificate authority and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sopweb test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TLSProxy:
    """Accepts TLS on its own port and forwards the plaintext to a Redis server, in a thread of its own."""

    def __init__(self, backend_port: int, cert, key):
        self.port, self.backend_port = free_port(), backend_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            try:
                backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, backend_writer), pipe(backend_reader, writer))

        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(handle, "127.0.0.1", self.port, ssl=self.context))
        started.set()
        self.loop.run_forever()  # until stop()

    def stop(self) -> None:
        async def shutdown():  # every connection's pipes end (and close their sockets) before the loop does
            self.server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)  # it stops the loop: its result is never read
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def tls_redis(tmp_path, settings):
    server = RedisServer(tmp_path / "redis")
    ca, cert, key = make_certificates(tmp_path)
    proxy = TLSProxy(server.port, cert, key)
    url = f"rediss://127.0.0.1:{proxy.port}/{bus._DB}?ssl_ca_certs={ca}"
    try:
        with redis_for_everything(settings, url, ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_ca_certs=str(ca)):
            yield proxy
    finally:
        proxy.stop()
        server.stop()


def test_every_client_speaks_tls_to_redis_and_checks_its_certificate(tls_redis, start_worker, start_web, olivia,
                                                                      settings):
    from sopweb.settings import _broker_tls

    broker_url, options = _broker_tls(settings.REDIS_URL)
    assert "ssl_ca_certs" not in broker_url and options["ssl_cert_reqs"] == ssl.CERT_REQUIRED  # Celery's form
    assert bus.client().ping()  # this process, through TLS
    with pytest.raises(redis.ConnectionError):  # the port speaks TLS only
        redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_timeout=2).ping()
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):  # an unknown authority: refused
        redis.Redis.from_url(f"rediss://127.0.0.1:{tls_redis.port}/0", socket_timeout=2).ping()

    worker = start_worker("control", queues="control")
    current_app.send_task("fleet.sweep_robots")  # this process's Celery producer, through TLS
    wait_for(lambda: b"fleet.sweep_robots" in worker.log.read_bytes() and b"succeeded" in worker.log.read_bytes(),
             60, "the worker to take a task over TLS")

    web = start_web()
    cookie = session_cookie(olivia)
    page = httpx.get(f"http://{web.address}/fleet/", headers={"Cookie": cookie}, timeout=30)
    assert page.status_code == 200 and "Live updates unavailable" not in page.text  # its health check: TLS
    with websockets.sync.client.connect(f"ws://{web.address}/ws/fleet/", open_timeout=30,
                                        additional_headers={"Cookie": cookie,
                                                            "Origin": f"http://{web.address}"}) as socket:
        broadcast("robot.status", {"robot": 1, "status": "paused", "via": "tls"})
        message = json.loads(socket.recv(timeout=20))
    assert message["events"][0]["data"]["via"] == "tls"  # the live hub's subscription, through TLS
