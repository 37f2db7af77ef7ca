"""API-Gateway behaviour in front of the emulated services.

What a client of the real cloud meets before any service code runs, reproduced here:

* an ``X-Request-Id`` (32 hex digits) on every response, errors included;
* gateway error bodies ``{"error_code": "APIGW.0xxx", "error_msg": ..., "request_id": ...}``
  (:class:`GatewayError`), ``APIGW.0101`` for unknown paths;
* throttling (:class:`Throttler`): sliding or fixed windows keyed by user, client IP or API,
  answered with 429 ``APIGW.0308``, and a "storm" that refuses a fraction of requests for a while;
* seeded fault injection (:class:`FaultInjector`): latency, 5xx, connection resets, truncated,
  malformed and slowly streamed bodies;
* counters (:class:`Stats`) served by ``GET /_emulator/stats``.

The middleware (:func:`gateway_middleware`) does not know about identities: the app passes a
callable that names the user behind a request for ``policy: user`` throttles.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import os
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from crawler.emulator.scenario import (
    FaultSpec,
    FaultsSpec,
    LatencySpec,
    StormSpec,
    ThrottleRule,
    ThrottleSpec,
)

log = logging.getLogger(__name__)

REQUEST_ID_KEY = web.RequestKey("emulator_request_id", str)
CONTROL_PREFIX = "emulator."

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    """32 lower-case hex digits, like Huawei's request ids."""
    return os.urandom(16).hex()


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class GatewayError(Exception):
    """An error answered by API Gateway itself: ``{"error_code", "error_msg", "request_id"}``.

    ``with_request_id=False`` gives the services' own shape (CBR's ``BackupService.NNNN`` errors
    carry no request id in the body; the header still does).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        with_request_id: bool = True,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.with_request_id = with_request_id

    def response(self, request_id: str) -> web.Response:
        body: dict[str, str] = {"error_code": self.code, "error_msg": self.message}
        if self.with_request_id:
            body["request_id"] = request_id
        return json_response(self.status, body, self.headers)


def route_matches(selector: str | None, route: str) -> bool:
    """A rule's ``api`` selector (None = every API, else an fnmatch pattern) against a route name."""
    return selector is None or fnmatch.fnmatchcase(route, selector)


def window_label(seconds: float) -> str:
    """How API Gateway spells a window in its 429 message: ``1 second``, ``5 second``, ``1 minute``."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} minute"
    if seconds == int(seconds):
        return f"{int(seconds)} second"
    return f"{seconds:g} second"


@dataclass
class Stats:
    """Counters served by ``GET /_emulator/stats``. Mutated only on the server's event loop."""

    requests: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    throttled: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    churn_created: int = 0
    churn_deleted: int = 0

    def record(self, route: str, status: int) -> None:
        self.requests[route][status] += 1

    def total(self, route: str | None = None, status: int | None = None) -> int:
        """Requests seen, optionally for one route and/or one status."""
        routes = [route] if route is not None else list(self.requests)
        return sum(
            n
            for r in routes
            for s, n in self.requests.get(r, Counter()).items()
            if status is None or s == status
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": {
                r: {str(s): n for s, n in sorted(c.items())} for r, c in sorted(self.requests.items())
            },
            "requests_total": self.total(),
            "throttled": dict(self.throttled),
            "throttled_total": sum(self.throttled.values()),
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "churn": {"created": self.churn_created, "deleted": self.churn_deleted},
        }


@dataclass(frozen=True)
class Refusal:
    """Why a request was throttled, and when it may come back."""

    policy: str
    limit: int
    window: float
    retry_after: float
    error_code: str = "APIGW.0308"

    def error(self, *, retry_after_header: bool) -> GatewayError:
        message = (
            f"The throttling threshold has been reached: policy {self.policy} over ratelimit,"
            f"limit:{self.limit},time:{window_label(self.window)}"
        )
        headers = {"Retry-After": str(max(1, math.ceil(self.retry_after)))} if retry_after_header else None
        return GatewayError(429, self.error_code, message, headers=headers)


class Throttler:
    """API-Gateway throttling: every matching rule must admit the request.

    Sliding windows remember the admission times of the last ``limit`` requests per key, so the
    wait is exact (``oldest + window - now``); fixed windows count per aligned window. Refused
    requests are not counted, as a client backing off must eventually get through.
    ``clock`` is monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self, spec: ThrottleSpec, rng: random.Random, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rules = spec.rules
        self._storm = spec.storm
        self._rng = rng
        self._clock = clock
        self._started = clock()
        self._sliding: dict[tuple[Any, ...], deque[float]] = {}
        self._fixed: dict[tuple[Any, ...], tuple[float, int]] = {}

    def check(self, route: str, *, user: str | None, ip: str) -> Refusal | None:
        """Admit (None) or refuse the request; admitted requests are counted against every rule."""
        now = self._clock()
        storm = self._storm_refusal(route, now)
        if storm is not None:
            return storm
        admitted: list[tuple[ThrottleRule, tuple[Any, ...]]] = []
        for index, rule in enumerate(self._rules):
            if not route_matches(rule.api, route):
                continue
            subject = {"user": user or f"ip:{ip}", "ip": ip, "api": "api"}[rule.policy]
            key = (index, subject, route if rule.per_api else "*")
            wait = self._wait(rule, key, now)
            if wait is not None:
                return Refusal(rule.policy, rule.limit, rule.window, wait, rule.error_code)
            admitted.append((rule, key))
        for rule, key in admitted:
            self._count(rule, key, now)
        return None

    def _storm_refusal(self, route: str, now: float) -> Refusal | None:
        storm: StormSpec | None = self._storm
        if storm is None or not route_matches(storm.api, route):
            return None
        elapsed = now - self._started
        end = storm.start_seconds + storm.duration_seconds
        if storm.start_seconds <= elapsed < end and self._rng.random() < storm.fraction:
            return Refusal("api", 200, 1.0, end - elapsed)
        return None

    def _wait(self, rule: ThrottleRule, key: tuple[Any, ...], now: float) -> float | None:
        if rule.algorithm == "fixed":
            start, count = self._fixed.get(key, (0.0, 0))
            window_start = math.floor(now / rule.window) * rule.window
            if start == window_start and count >= rule.limit:
                return window_start + rule.window - now
            return None
        times = self._sliding.get(key)
        if times is None:
            return None
        while times and times[0] <= now - rule.window:
            times.popleft()
        if len(times) >= rule.limit:
            return times[0] + rule.window - now
        return None

    def _count(self, rule: ThrottleRule, key: tuple[Any, ...], now: float) -> None:
        if rule.algorithm == "fixed":
            start, count = self._fixed.get(key, (0.0, 0))
            window_start = math.floor(now / rule.window) * rule.window
            self._fixed[key] = (window_start, count + 1 if start == window_start else 1)
        else:
            self._sliding.setdefault(key, deque(maxlen=rule.limit)).append(now)


@dataclass(frozen=True)
class Fault:
    """A fault chosen for one request."""

    spec: FaultSpec

    @property
    def kind(self) -> str:
        return self.spec.kind


class FaultInjector:
    """Seeded latency and fault dice. One ``random.Random(seed)`` makes a run reproducible."""

    def __init__(self, spec: FaultsSpec, rng: random.Random) -> None:
        self._spec = spec
        self._rng = rng
        self._matched: Counter[int] = Counter()

    def latency_seconds(self, route: str) -> float:
        """Sum of the matching latency distributions, in seconds."""
        total_ms = 0.0
        for lat in self._spec.latency:
            if route_matches(lat.api, route):
                total_ms += min(self._sample(lat), lat.cap_ms)
        return total_ms / 1000.0

    def _sample(self, lat: LatencySpec) -> float:
        if lat.distribution == "fixed":
            return lat.ms
        if lat.distribution == "uniform":
            return self._rng.uniform(lat.min_ms, max(lat.min_ms, lat.max_ms))
        return self._rng.lognormvariate(math.log(lat.median_ms), lat.sigma)

    def pick(self, route: str) -> Fault | None:
        """The first fault whose dice roll fires for this request, if any."""
        for index, spec in enumerate(self._spec.faults):
            if not route_matches(spec.api, route):
                continue
            self._matched[index] += 1
            if spec.first_n is not None and self._matched[index] > spec.first_n:
                continue
            if spec.probability >= 1.0 or self._rng.random() < spec.probability:
                return Fault(spec)
        return None


def status_fault_error(route: str, status: int) -> GatewayError:
    """The body a gateway sends when the backend fails: APIGW.0201 for 502/504, APIGW.0613 for IAM 503."""
    if status == 503 and route.startswith("iam."):
        return GatewayError(503, "APIGW.0613", "IAM service is unavailable, please try again later.")
    if status == 500 and route.startswith("cbr."):
        return GatewayError(500, "BackupService.9910", "Unknown error.", with_request_id=False)
    messages = {
        500: "Internal server error.",
        502: "Backend unavailable.",
        503: "Backend service is unavailable, please try again later.",
        504: "Backend timeout.",
    }
    return GatewayError(status, "APIGW.0201", messages[status])


async def _close_transport(request: web.Request, *, abort: bool) -> None:
    transport = request.transport
    if transport is not None:
        if abort:
            transport.abort()
        else:
            transport.close()


async def apply_body_fault(
    request: web.Request, response: web.StreamResponse, fault: Fault
) -> web.StreamResponse:
    """Damage a finished response as the fault says. Streamed responses pass through untouched."""
    if (
        not isinstance(response, web.Response)
        or response.status >= 300
        or not isinstance(response.body, bytes)
    ):
        return response
    body = response.body
    headers = {
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
    }
    if fault.kind == "malformed":
        # What a misbehaving proxy returns: an HTML error page where JSON was promised.
        broken = b'{"backups": [<html><head><title>502 Bad Gateway</title></head></html>'
        return web.Response(
            status=response.status, body=broken, content_type="application/json", headers=headers
        )
    if fault.kind == "truncate":
        cut = body[: max(1, len(body) // 2)]
        if fault.spec.honest_length:
            return web.Response(
                status=response.status, body=cut, content_type="application/json", headers=headers
            )
        # Announce the full length, send half, then close: the client sees a short read.
        stream = web.StreamResponse(status=response.status, headers=headers)
        stream.content_type = "application/json"
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(cut)
        await _close_transport(request, abort=False)
        return stream
    if fault.kind == "slow_body":
        stream = web.StreamResponse(status=response.status, headers=headers)
        stream.content_type = "application/json"
        stream.content_length = len(body)
        await stream.prepare(request)
        step = fault.spec.chunk_bytes
        for start in range(0, len(body), step):
            await stream.write(body[start : start + step])
            await asyncio.sleep(fault.spec.chunk_delay_ms / 1000.0)
        await stream.write_eof()
        return stream
    return response


@dataclass
class Gateway:
    """Throttling, faults, request ids and counters for one app."""

    throttler: Throttler
    faults: FaultInjector
    stats: Stats
    retry_after_header: bool = False
    # Names the user behind a request (token or AK owner) for policy-user throttles; None if unknown.
    user_of: Callable[[web.Request], str | None] = lambda _request: None

    @classmethod
    def build(
        cls,
        throttle: ThrottleSpec,
        faults: FaultsSpec,
        *,
        seed: int,
        retry_after_header: bool = False,
        user_of: Callable[[web.Request], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Gateway:
        # Separate streams so that adding a throttle storm does not reshuffle the fault dice.
        return cls(
            throttler=Throttler(throttle, random.Random(f"{seed}:throttle"), clock),
            faults=FaultInjector(faults, random.Random(f"{seed}:faults")),
            stats=Stats(),
            retry_after_header=retry_after_header,
            user_of=user_of or (lambda _request: None),
        )

    def middleware(self) -> Any:
        """The aiohttp middleware; install it first so that it wraps everything else."""

        @web.middleware
        async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            request_id = new_request_id()
            request[REQUEST_ID_KEY] = request_id
            route = route_name(request)
            try:
                response = await self._handle(request, handler, route)
            except GatewayError as exc:
                response = exc.response(request_id)
            except web.HTTPNotFound:
                response = GatewayError(
                    404, "APIGW.0101", "The API does not exist or has not been published."
                ).response(request_id)
            except web.HTTPMethodNotAllowed:
                response = GatewayError(
                    404, "APIGW.0101", "The API does not exist or has not been published."
                ).response(request_id)
            except web.HTTPException:
                raise
            except Exception:
                # A bug in the emulator: answer like a failing backend, keep the traceback in the log.
                log.exception("emulator handler failed (request id %s)", request_id)
                response = GatewayError(500, "APIGW.0201", "Internal server error.").response(request_id)
            if not response.prepared:
                response.headers["X-Request-Id"] = request_id
            self.stats.record(route, response.status)
            return response

        return gateway_middleware

    async def _handle(self, request: web.Request, handler: Handler, route: str) -> web.StreamResponse:
        if route.startswith(CONTROL_PREFIX) or route == "unknown":
            return await handler(request)
        delay = self.faults.latency_seconds(route)
        if delay > 0:
            await asyncio.sleep(delay)
        refusal = self.throttler.check(route, user=self.user_of(request), ip=request.remote or "")
        if refusal is not None:
            self.stats.throttled[route] += 1
            raise refusal.error(retry_after_header=self.retry_after_header)
        fault = self.faults.pick(route)
        if fault is not None:
            self.stats.faults[fault.kind] += 1
            if fault.kind == "status":
                raise status_fault_error(route, fault.spec.status)
            if fault.kind == "reset":
                await _close_transport(request, abort=True)
                # Nothing can be sent on an aborted transport; the empty response is never written.
                return web.Response(status=499)
        response = await handler(request)
        if fault is not None:
            response = await apply_body_fault(request, response, fault)
        return response


def route_name(request: web.Request) -> str:
    """The name the app gave the matched route (``cbr.list_backups``), or ``unknown``."""
    name = request.match_info.route.name
    return name or "unknown"


async def add_request_id_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: streamed responses get their X-Request-Id before headers go out."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = request_id


__all__ = [
    "REQUEST_ID_KEY",
    "FaultInjector",
    "Gateway",
    "GatewayError",
    "Refusal",
    "Stats",
    "Throttler",
    "add_request_id_on_prepare",
    "json_response",
    "new_request_id",
    "route_matches",
    "route_name",
    "status_fault_error",
    "window_label",
]
