"""``cmdop-server --dev serve``: its own self-signed TLS 1.3 endpoint, no plaintext."""

import http.client
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import free_port, wait_for_port

pytestmark = pytest.mark.unit


def test_dev_endpoint_is_tls13_self_signed(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["CMDOP_DEV_STATE"] = str(tmp_path)
    exe = Path(sys.executable).with_name("cmdop-server")
    proc = subprocess.Popen([str(exe), "--dev", "serve", "--bind", f"127.0.0.1:{port}",
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, proc, timeout=30)
        assert oct((tmp_path / "dev.key").stat().st_mode & 0o777) == "0o600"
        ctx = ssl.create_default_context(cafile=str(tmp_path / "dev.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        version = conn.sock.version()
        resp = conn.getresponse()
        assert resp.status == 200 and version == "TLSv1.3"
        conn.close()

        old = ssl.create_default_context(cafile=str(tmp_path / "dev.crt"))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c = http.client.HTTPSConnection("127.0.0.1", port, context=old, timeout=10)
            c.request("GET", "/healthz")
            c.getresponse()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/healthz")
            plain.getresponse()
    finally:
        proc.terminate()
        proc.wait(15)
