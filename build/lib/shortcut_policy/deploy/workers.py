"""Inference off the control loop: ``ThreadedInference`` runs the policy in a daemon thread (``submit``
and ``poll`` never block); ``InlineInference`` is its deterministic stand-in on a ``FakeClock``."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .clocks import Clock

ActFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # {key: (1, n_obs_steps, *shape)} -> (1, n_action_steps, A)


@dataclass
class ChunkRequest:
    """An observation history sent to the policy at ``obs_tick`` (its action 0 is due then), with its deadline."""

    seq: int
    obs: dict[str, np.ndarray]  # {key: (1, n_obs_steps, *shape)}
    obs_tick: int  # action 0 of the answer is due at this tick
    request_time: float
    deadline_time: float


@dataclass
class ChunkResult:
    """The chunk a request produced and when it was ready."""

    request: ChunkRequest
    actions: np.ndarray  # (n_action_steps, action_dim)
    done_time: float


def call_policy(infer: ActFn, obs: np.ndarray, n_action_steps: int, action_dim: int) -> np.ndarray:
    out = np.asarray(infer(obs), dtype=np.float64)
    want = (1, n_action_steps, action_dim)
    if out.shape != want:
        raise ValueError(f"the policy returned shape {out.shape}, expected (1, n_action_steps, action_dim) = {want}")
    if not np.isfinite(out).all():
        raise ValueError("the policy returned NaN or inf actions")
    return out[0]


class ThreadedInference:
    """Runs one request at a time in a daemon thread; ``submit`` and ``poll`` never block.

    An exception raised by the policy is re-raised by the next ``poll`` (the loop stops rather
    than act on a broken policy).
    """

    def __init__(self, infer: ActFn, n_action_steps: int, action_dim: int, clock: Clock):
        self._infer, self._n, self._a, self._clock = infer, n_action_steps, action_dim, clock
        self._cv = threading.Condition()
        self._request: ChunkRequest | None = None
        self._result: ChunkResult | None = None
        self._error: BaseException | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="policy-inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._busy

    def submit(self, request: ChunkRequest) -> bool:
        """Queue ``request``; False (nothing queued) while the previous one is running."""
        with self._cv:
            if self._busy or self._closed:
                return False
            self._request, self._busy = request, True
            self._cv.notify()
            return True

    def poll(self) -> ChunkResult | None:
        with self._cv:
            if self._error is not None:
                err, self._error = self._error, None
                raise RuntimeError(f"policy inference failed: {err}") from err
            res, self._result = self._result, None
            return res

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                req, self._request = self._request, None
            try:
                actions = call_policy(self._infer, req.obs, self._n, self._a)
                res, err = ChunkResult(req, actions, self._clock.now()), None
            except BaseException as e:  # handed to the control loop
                res, err = None, e
            with self._cv:
                self._result, self._error, self._busy = res, err, False
                self._cv.notify_all()

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the thread; with ``wait`` let a running request finish first (so a next run does
        not share the CPU with a leftover inference)."""
        with self._cv:
            if wait:
                self._cv.wait_for(lambda: not self._busy, timeout=timeout)
            self._closed = True
            self._cv.notify_all()
        if wait:
            self._thread.join(timeout)


class InlineInference:
    """A deterministic stand-in for ``ThreadedInference`` on a ``FakeClock``: the policy runs at
    ``submit`` and its result becomes visible ``latency(request)`` seconds after the request."""

    def __init__(self, infer: ActFn, n_action_steps: int, action_dim: int, clock: Clock,
                 latency: Callable[[ChunkRequest], float]):
        self._infer, self._n, self._a, self._clock, self._latency = infer, n_action_steps, action_dim, clock, latency
        self._pending: ChunkResult | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, request: ChunkRequest) -> bool:
        if self._pending is not None:
            return False
        actions = call_policy(self._infer, request.obs, self._n, self._a)
        self._pending = ChunkResult(request, actions, request.request_time + float(self._latency(request)))
        return True

    def poll(self) -> ChunkResult | None:
        if self._pending is not None and self._clock.now() >= self._pending.done_time:
            res, self._pending = self._pending, None
            return res
        return None

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        self._pending = None
