"""A tenant's services for one run: its credential, its endpoints and its quota owners' limiters.

Built once per tenant from its configuration. The credential is read here (from env vars or files)
and every limiter is keyed by who pays for the request in the gateway's eyes (crawler.pipeline.
ratelimit): CBR and EPS by the credential's identity, IAM token requests by the tenant (they carry
their credential in the body, so the credential is not known to the gateway yet).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import aiohttp

from crawler.config import TenantConfig
from crawler.errors import CrawlerError
from crawler.pipeline.auth import IamEndpoints, build_authenticator
from crawler.pipeline.client import ApiClient, Authenticator
from crawler.pipeline.ratelimit import LimiterRegistry, QuotaLimiter, QuotaOwner

log = logging.getLogger(__name__)


class TenantServices:
    """Where a tenant's requests go, as whom, and at what pace (cached per region: asked per request)."""

    def __init__(self, config: TenantConfig, client: ApiClient, limiters: LimiterRegistry) -> None:
        self.config = config
        self.name = config.name
        self.client = client.for_tenant(tls_context(config), config.proxy)
        self._limiters = limiters
        iam_base = config.endpoint("iam", None)
        self.iam = IamEndpoints(
            iam_base, limiters.get(QuotaOwner(f"tenant:{self.name}", "iam", iam_base), None)
        )
        self.auth: Authenticator = build_authenticator(config.auth, self.client, self.iam)
        self._cbr_endpoints: dict[str, str] = {}
        self._cbr_limiters: dict[str, QuotaLimiter] = {}

    def _limiter(self, service: str, endpoint: str) -> QuotaLimiter:
        owner = QuotaOwner(self.auth.identity, service, endpoint)
        return self._limiters.get(owner, self.config.rate_limit.rate)

    def cbr_endpoint(self, region: str) -> str:
        endpoint = self._cbr_endpoints.get(region)
        if endpoint is None:
            endpoint = self._cbr_endpoints[region] = self.config.endpoint("cbr", region)
        return endpoint

    def cbr_limiter(self, region: str) -> QuotaLimiter:
        limiter = self._cbr_limiters.get(region)
        if limiter is None:
            limiter = self._cbr_limiters[region] = self._limiter("cbr", self.cbr_endpoint(region))
        return limiter

    def eps_endpoint(self) -> str:
        return self.config.endpoint("eps", None)

    def eps_limiter(self) -> QuotaLimiter:
        return self._limiter("eps", self.eps_endpoint())


def tls_context(config: TenantConfig) -> ssl.SSLContext | bool:
    """The tenant's certificate trust: the system's (True), its CA bundle, or none (said loudly)."""
    if not config.tls.verify:
        log.warning(
            "tenant %s: TLS certificate verification is OFF (tls.verify: false in %s): anyone on the "
            "path can read its credential and its inventory",
            config.name,
            config.source,
        )
        return False
    if config.tls.ca_file is None:
        return True
    path = config.resolve_path(config.tls.ca_file)
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise CrawlerError(
            f"tenant {config.name}: tls.ca_file {path}: cannot be read as a PEM CA bundle: {exc}"
        ) from exc


def open_session(tenants: Sequence[TenantConfig]) -> aiohttp.ClientSession:
    """The run's one HTTP session, with the tenants' most patient timeouts and room for every worker."""
    connect = max((t.timeouts.connect for t in tenants), default=10.0)
    read = max((t.timeouts.read for t in tenants), default=60.0)
    total = max((t.timeouts.request for t in tenants), default=300.0)
    timeout = aiohttp.ClientTimeout(total=total, connect=connect, sock_read=read)
    limit = sum(t.rate_limit.concurrency for t in tenants) + 8
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300)
    # No trust_env: the proxy variables are honoured by the client (ApiClient._proxy_for, once per
    # endpoint); trust_env would also look ~/.netrc up in a thread for every request, and send
    # credentials found there.
    return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)
