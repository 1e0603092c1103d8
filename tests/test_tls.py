"""
TLS from the command line's own option: C{--listen ssl:...}, with a
certificate made for the test, and the official client trusting it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from twisted.trial.unittest import TestCase

from hfendpoint.service._cli import build_parser, listen_descriptions

from .gateway import in_thread, start_gateway


def make_certificate(directory: str) -> tuple[str, str]:
    """
    A self-signed certificate for 127.0.0.1 and localhost, and its key.

    @return: the paths of the key and of the certificate, in PEM.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    certificate_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(certificate_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


class TLSTests(TestCase):
    async def test_official_client_over_tls(self):
        directory = self.mktemp()
        os.makedirs(directory)
        key, certificate = make_certificate(directory)
        args = build_parser().parse_args(
            ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}"]
        )
        _, gateway = await start_gateway(self, listen=listen_descriptions(args), api_keys=["sk-tls"])
        port = gateway.ports[0].getHost().port

        import httpx
        import openai

        http = httpx.Client(verify=certificate)
        self.addCleanup(http.close)
        client = openai.OpenAI(
            base_url=f"https://localhost:{port}/v1", api_key="sk-tls", max_retries=0, http_client=http
        )
        self.addCleanup(client.close)
        reply = await in_thread(
            client.chat.completions.create,
            model="m",
            messages=[{"role": "user", "content": "Hello there"}],
        )
        self.assertEqual(reply.choices[0].message.content, "Hello! You said: Hello there")
        stream = await in_thread(
            lambda: list(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
                )
            )
        )
        self.assertEqual(stream[-1].choices[0].finish_reason, "stop")

        # A client that does not trust the certificate is refused.
        untrusting = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key="sk-tls", max_retries=0)
        self.addCleanup(untrusting.close)
        with self.assertRaises(openai.APIConnectionError):
            await in_thread(untrusting.models.list)
