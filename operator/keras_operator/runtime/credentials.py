"""Where the API server is and how the operator logs in to it: found once, here, for all of its clients
(the asyncio one of the reconciles, runtime/kube.py; the blocking one that renews the Lease,
runtime/leader.py; kopf's, handlers/setup.py).

The search is the usual one: KERAS_OPERATOR_API_SERVER (a plain URL, no credentials: the tests' emulated
cluster), else the pod's service account, else the kubeconfig (KUBECONFIG or ~/.kube/config). The official
client's loaders read them, so every form they know is honoured, and a token that expires is fetched again
when due: the service account's file, rotated by the kubelet, is read again every minute; an exec plugin
(`aws eks get-token`, `gke-gcloud-auth-plugin`) is run again once its `expirationTimestamp` is near.
"""

from __future__ import annotations

import copy
import functools
import os
import ssl
from dataclasses import dataclass

import kopf
import kubernetes

NO_CREDENTIALS = (
    "no Kubernetes credentials: not in a cluster, no kubeconfig (KUBECONFIG / ~/.kube/config), "
    "and KERAS_OPERATOR_API_SERVER unset"
)


class NoCredentials(Exception):
    """Nothing to log in with: the operator cannot run."""


@dataclass(frozen=True)
class Credentials:
    """One API server and the login to it."""

    host: str
    """The API server's URL, without a trailing slash."""
    configuration: kubernetes.client.Configuration | None = None
    """The official client's settings as its loaders found them (CA, client certificate, token and the hook
    that refreshes it, tls-server-name); None for a plain URL with no login."""

    @property
    def server_name(self) -> str | None:
        """The name the server's certificate is checked against (and sent as SNI) instead of the URL's host:
        the kubeconfig's `tls-server-name`, for an API server reached through an address its certificate
        does not name."""
        return getattr(self.configuration, "tls_server_name", None) or None

    def token(self) -> str | None:
        """The Authorization header's value ("Bearer ..."), fetched again when it is due (blocking: a file
        read, or an exec plugin run)."""
        if self.configuration is None:
            return None
        return self.configuration.get_api_key_with_prefix("BearerToken") or None

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS as the kubeconfig says (CA, client certificate, insecure-skip-tls-verify); None over http."""
        conf = self.configuration
        if conf is None or not self.host.startswith("https"):
            return None
        context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
        if conf.cert_file:
            context.load_cert_chain(conf.cert_file, keyfile=conf.key_file)
        if not conf.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def for_kopf(self) -> kopf.ConnectionInfo:
        """The same login for kopf's watches and its own writes. kopf logs in again after a 401, which
        fetches a token that expired meanwhile. (kopf's client has no tls-server-name.)"""
        conf = self.configuration
        if conf is None:
            return kopf.ConnectionInfo(server=self.host, insecure=True, default_namespace="default")
        header = self.token()
        scheme, _, token = header.partition(" ") if header else ("", "", "")
        return kopf.ConnectionInfo(
            server=self.host,
            ca_path=conf.ssl_ca_cert,
            insecure=not conf.verify_ssl,
            username=conf.username or None,
            password=conf.password or None,
            scheme=(scheme or None) if token else None,
            token=token or scheme or None,  # a header of one word is the token alone
            certificate_path=conf.cert_file,
            private_key_path=conf.key_file,
        )

    def blocking(self) -> kubernetes.client.Configuration:
        """A copy of the settings for a blocking client of its own (the Lease's)."""
        if self.configuration is None:
            conf = kubernetes.client.Configuration()
            conf.host = self.host
            return conf
        return copy.deepcopy(self.configuration)


def find(api_server: str | None) -> Credentials:
    """The operator's credentials (the search in the module's docstring); NoCredentials when none is found."""
    if api_server:
        return Credentials(api_server.rstrip("/"))
    from kubernetes import config

    # KUBECONFIG as it is now: the loader's own default was read when it was imported.
    kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
    loads = (config.load_incluster_config, functools.partial(config.load_kube_config, kubeconfig))
    for load in loads:
        conf = kubernetes.client.Configuration()
        try:
            load(client_configuration=conf)
        except (config.ConfigException, OSError):
            continue
        return Credentials(str(conf.host).rstrip("/"), conf)
    raise NoCredentials(NO_CREDENTIALS)
