"""The operator's login, found once (runtime/credentials.py) and used by both of its clients: the asyncio
`Api` of the reconciles and the blocking Lease client. What a kubeconfig says is honoured by both:
`tls-server-name` (an API server reached at an address its certificate does not name), and an exec
plugin's token, fetched again once it is due."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
import yaml

from helpers.certs import CA, key_pem, pem
from keras_operator.runtime import credentials
from keras_operator.runtime.kube import Api
from keras_operator.runtime.leader import lease_client

SERVER_NAME = "kubernetes.internal"  # the only name in the server's certificate: not 127.0.0.1


class ApiServer:
    """An HTTPS server answering every GET with a small object, recording each request's Authorization."""

    def __init__(self, folder: Path) -> None:
        self.ca = CA.make()
        key, cert = self.ca.serving(SERVER_NAME, ip=False)
        (folder / "tls.crt").write_text(pem(cert))
        (folder / "tls.key").write_bytes(key_pem(key))
        self.tokens: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.tokens.append(self.headers.get("Authorization"))
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                body = json.dumps({"kind": "Lease", "metadata": {"name": name}, "spec": {}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: Path, user: dict[str, Any], **cluster: Any) -> Path:
        ca = base64.b64encode(self.ca.pem.encode()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.url, "certificate-authority-data": ca, **cluster}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: the kubeconfig is read
    server = ApiServer(tmp_path)
    yield server
    server.close()


def lease_read(login: credentials.Credentials) -> str:
    api = kubernetes.client.CoordinationV1Api(lease_client(login))
    return str(api.read_namespaced_lease("lease", "ns", _request_timeout=5).metadata.name)


async def test_tls_server_name_is_honoured_by_both_clients(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = {"token": "t0ken"}
    monkeypatch.setenv(
        "KUBECONFIG", str(api_server.kubeconfig(tmp_path / "named", user, **{"tls-server-name": SERVER_NAME}))
    )
    login = credentials.find(None)
    assert login.server_name == SERVER_NAME
    api = Api(login, timeout=5)
    try:
        assert await api.get("Job", "ns", "a") == {"kind": "Lease", "metadata": {"name": "a"}, "spec": {}}
    finally:
        await api.close()
    assert lease_read(login) == "lease"
    assert api_server.tokens == ["Bearer t0ken", "Bearer t0ken"]


async def test_without_tls_server_name_the_certificate_does_not_match(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(api_server.kubeconfig(tmp_path / "plain", {"token": "t0ken"})))
    api = Api(credentials.find(None), timeout=5)
    try:
        with pytest.raises(kopf.TemporaryError, match="unreachable"):
            await api.get("Job", "ns", "a")
    finally:
        await api.close()
    assert api_server.tokens == []


def test_kopf_logs_in_with_the_same_credentials(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf's watches once found the login a third way (its own call of the client's loaders)."""
    from keras_operator.handlers import setup

    named = api_server.kubeconfig(tmp_path / "named", {"token": "t0ken"}, **{"tls-server-name": SERVER_NAME})
    monkeypatch.setenv("KUBECONFIG", str(named))
    login = credentials.find(None)
    info = setup.login(memo=kopf.Memo(api=Api(login, timeout=5)))
    assert info is not None
    assert (info.server, info.scheme, info.token, info.insecure) == (api_server.url, "Bearer", "t0ken", False)
    assert login.configuration is not None
    assert info.ca_path == login.configuration.ssl_ca_cert
    assert Path(info.ca_path).read_text() == api_server.ca.pem
    assert info.as_http_headers()["User-Agent"].startswith("keras-operator/")
    plain = setup.login(memo=kopf.Memo(api=Api(credentials.find("http://127.0.0.1:1"), timeout=5)))
    assert plain is not None
    assert (plain.server, plain.token, plain.insecure) == ("http://127.0.0.1:1", None, True)


def test_no_login_anywhere_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(credentials.NoCredentials, match="no Kubernetes credentials"):
        credentials.find(None)
    assert credentials.find("http://127.0.0.1:1/").host == "http://127.0.0.1:1"  # the setting: no login


EXEC_PLUGIN = """
import datetime, json, pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
# Expires within the loaders' 5-minute margin: due again at every look.
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1beta1",
    "kind": "ExecCredential",
    "status": {"token": f"tok-{n}", "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
}))
"""


@pytest.mark.slow  # the exec plugin is a process
async def test_an_exec_plugins_token_is_fetched_again_when_due(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin), str(tmp_path / "count")],
        }
    }
    kubeconfig = api_server.kubeconfig(tmp_path / "exec", user, **{"tls-server-name": SERVER_NAME})
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    login = credentials.find(None)
    # Asked of the credentials at every call (a recheck of 0), the token changes each time it is due.
    api = Api(login, timeout=5, token_recheck=0)
    cached = Api(login, timeout=5)  # the default: asked again after 30 s, so the same token for now
    try:
        for client in (api, api, cached, cached):
            await client.get("Job", "ns", "a")
    finally:
        await api.close()
        await cached.close()
    fresh, kept = api_server.tokens[:2], api_server.tokens[2:]
    assert all(t and t.startswith("Bearer tok-") for t in api_server.tokens), api_server.tokens
    assert fresh[0] != fresh[1]
    assert kept[0] == kept[1]
