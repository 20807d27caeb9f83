"""A real-time control loop for chunked policies: fixed rate, timed chunks, inference off the loop.

The loop ticks at ``control_hz``. Tick k is due at ``t0 + k * dt`` (dt = 1 / control_hz). At each
tick it (1) wakes precisely (sleep most of the wait, spin on ``perf_counter`` for the rest),
(2) reads an observation into the history, (3) takes in any chunk the inference worker finished,
(4) sends the action due at this tick, (5) asks the worker for a new chunk every
``replan_every`` ticks when it is idle. Inference runs in a background thread, so a slow policy
never delays a tick; the loop only polls.

Timing of a chunk. A chunk computed from the observation of tick j has its action i due at tick
j + i (time t0 + (j + i) dt): action 0 belongs to the observation's own instant, as in training
(the executed chunk starts at the last observed step). When the chunk arrives at tick k > j, the
actions due before tick k are stale and dropped (``stale_dropped``); so with any inference
latency above zero, action 0 of every chunk after the first is dropped by construction. The
first chunk of a run is computed before tick 0 (the robot is still), so it starts at action 0.

Deadline and fallback. Each request has a deadline ``deadline_s`` after it was made (default one
control period: the new plan should be in effect at the next tick). While a request is overdue
the loop keeps executing the previous chunk's remaining actions (``fallback_previous``); when
those run out it holds the last action sent (``fallback_hold``). A chunk that arrives after its
deadline still counts as a ``deadline_miss`` and is used from its first action that is not yet
stale (it may be stale entirely, then it is dropped whole). With the default
``replan_every = n_action_steps // 2`` a chunk that misses its deadline by up to
n_action_steps - replan_every - 1 ticks is covered by the previous chunk without holding.

Temporal ensembling (optional, ``ensemble_k``; ACT, Zhao et al. 2023). Every stored chunk that
has an action due at this tick votes, with weights w_i = exp(-k i) normalized to sum 1, where
i = 0 is the OLDEST chunk (ACT's convention: k > 0 favours older plans and smooths the
motion, k = 0 averages, k < 0 favours the newest). Without it the newest chunk that covers the
tick is used alone.

Falling behind. If a tick wakes more than one period late (a stalled process), the missed ticks
are skipped, not replayed in a burst (``overrun_ticks``); their actions become stale.

Clock and sleep are injectable (``Clock``): ``RealClock`` for the robot, ``FakeClock`` and
``InlineInference`` (a worker whose result appears after a simulated latency) make tests
deterministic.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..shape_meta import ShapeMeta, ShapeMetaError

ActFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # {key: (1, n_obs_steps, *shape)} -> (1, n_action_steps, A)
DYADIC_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)  # core.schedule.DYADIC_COUNTS; kept here so deployment needs no torch
_EPS = 1e-9  # seconds: tick times are sums of floats; equal instants must compare equal


# ---------------------------------------------------------------------------------------------- clocks
class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock."""

    def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (or at once if it has passed)."""


class RealClock:
    """``perf_counter`` with precise waits: ``time.sleep`` for all but the last ``spin_s`` (the OS
    wakes a sleeping thread late by up to a scheduler slice), then a busy wait on
    ``perf_counter`` for the rest. The spin costs up to ``spin_s`` of CPU per tick."""

    def __init__(self, spin_s: float = 0.001):
        if spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, got {spin_s}")
        self.spin_s = float(spin_s)

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.perf_counter()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.perf_counter() < deadline:
            pass


class FakeClock:
    """Simulated time for tests: ``sleep_until`` jumps forward, ``advance`` adds time (e.g. a fake
    observation read or a fake inference that "takes" some seconds)."""

    def __init__(self, start: float = 0.0):
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, float(deadline))

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by {seconds} s")
        self.t += float(seconds)


# ---------------------------------------------------------------------------------------------- ensembling
def ensemble_weights(n: int, k: float) -> np.ndarray:
    """ACT's temporal-ensembling weights for ``n`` predictions of one action, OLDEST FIRST.

    w_i = exp(-k i) / sum_j exp(-k j), i = 0 the oldest chunk's prediction. k > 0 weights old
    predictions more (smoother, slower to react), k = 0 is the plain mean, k < 0 favours the newest.
    """
    if n < 1:
        raise ValueError(f"need at least one prediction to ensemble, got n={n}")
    if not math.isfinite(k):
        raise ValueError(f"ensemble k must be finite, got {k}")
    i = np.arange(n, dtype=np.float64)
    logw = -k * i
    w = np.exp(logw - logw.max())  # shifted so a large |k| cannot overflow
    return w / w.sum()


# ---------------------------------------------------------------------------------------------- scheduling
@dataclass
class TimedChunk:
    """Actions (n, A) of one chunk; ``actions[i]`` is due at tick ``first_tick + i``."""

    actions: np.ndarray
    first_tick: int
    seq: int

    @property
    def end_tick(self) -> int:
        """First tick after the chunk."""
        return self.first_tick + len(self.actions)

    def due_times(self, t0: float, dt: float) -> np.ndarray:
        """Wall-clock due time of every action, (n,)."""
        return t0 + (self.first_tick + np.arange(len(self.actions))) * dt


class ActionScheduler:
    """Which action to send at a tick, given the chunks received so far. Pure bookkeeping in
    integer ticks (no floats compared, no clock), so its decisions are exact and testable."""

    def __init__(self, action_dim: int, ensemble_k: float | None = None):
        self.action_dim = int(action_dim)
        self.ensemble_k = ensemble_k
        self.chunks: list[TimedChunk] = []  # oldest (lowest seq) first
        self.last_action: np.ndarray | None = None

    def add_chunk(self, actions: np.ndarray, obs_tick: int, current_tick: int, seq: int) -> int:
        """Store a chunk computed from the observation of ``obs_tick``, arriving at ``current_tick``.

        Actions due before ``current_tick`` are stale and dropped; returns how many were dropped
        (the whole chunk when it is entirely in the past).
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"a chunk must have shape (n_action_steps, {self.action_dim}), got {actions.shape}")
        if current_tick < obs_tick:
            raise ValueError(f"a chunk cannot arrive (tick {current_tick}) before its observation (tick {obs_tick})")
        stale = min(current_tick - obs_tick, len(actions))
        if stale < len(actions):
            self.chunks.append(TimedChunk(actions[stale:], obs_tick + stale, seq))
            self.chunks.sort(key=lambda c: c.seq)
        self._prune(current_tick)
        return stale

    def _prune(self, tick: int) -> None:
        self.chunks = [c for c in self.chunks if c.end_tick > tick]

    def action_at(self, tick: int) -> tuple[np.ndarray | None, str, int | None]:
        """(action, source, seq of the newest chunk used) for ``tick``.

        source: "chunk" (newest covering chunk), "ensemble" (several chunks weighted), "hold"
        (no chunk covers the tick: the last action sent, None before any).
        """
        self._prune(tick)
        covering = [c for c in self.chunks if c.first_tick <= tick < c.end_tick]  # oldest first
        if not covering:
            return (None if self.last_action is None else self.last_action.copy()), "hold", None
        newest = covering[-1]
        if self.ensemble_k is None or len(covering) == 1:
            action, source = newest.actions[tick - newest.first_tick], "chunk"
        else:
            w = ensemble_weights(len(covering), self.ensemble_k)
            preds = np.stack([c.actions[tick - c.first_tick] for c in covering])  # (n, A), oldest first
            action, source = w @ preds, "ensemble"
        self.last_action = np.array(action, dtype=np.float64)
        return self.last_action.copy(), source, newest.seq


class ObservationHistory:
    """The last ``n_obs_steps`` observations ({key: per-step array} as ``shape_meta`` describes them);
    the first one is repeated after a reset (as the training windows pad an episode start). Rejects
    missing or unknown keys, wrong shapes or dtypes and NaN with a clear error."""

    def __init__(self, n_obs_steps: int, shape_meta: ShapeMeta):
        self.n_obs_steps, self.shape_meta = int(n_obs_steps), shape_meta
        self._buf: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)

    def check(self, obs: Any) -> dict[str, np.ndarray]:
        if isinstance(obs, Mapping):
            obs = {k: np.asarray(v) for k, v in obs.items()}
        try:
            obs = self.shape_meta.check_obs(obs, n_lead=0, lead_names=(), where="get_observation()")
        except ShapeMetaError as e:
            raise ValueError(str(e)) from None
        out = {}
        for key, arr in obs.items():
            spec = self.shape_meta.obs[key]
            arr = np.array(arr, dtype=spec.dtype, copy=True)
            if spec.type == "low_dim" and not np.isfinite(arr).all():
                bad = np.flatnonzero(~np.isfinite(arr.reshape(-1))).tolist()
                raise ValueError(f"observation {key!r} contains NaN or inf at flat indices {bad}; refusing to act on it")
            out[key] = arr
        return out

    def reset(self, obs: Any) -> None:
        arr = self.check(obs)
        self._buf.clear()
        self._buf.extend([arr] * self.n_obs_steps)

    def push(self, obs: Any) -> None:
        if not self._buf:
            self.reset(obs)
        else:
            self._buf.append(self.check(obs))

    def array(self) -> dict[str, np.ndarray]:
        """{key: (1, n_obs_steps, *shape)}, oldest first."""
        return {k: np.stack([o[k] for o in self._buf])[None] for k in self.shape_meta.keys}


# ---------------------------------------------------------------------------------------------- inference
@dataclass
class ChunkRequest:
    seq: int
    obs: dict[str, np.ndarray]  # {key: (1, n_obs_steps, *shape)}
    obs_tick: int  # action 0 of the answer is due at this tick
    request_time: float
    deadline_time: float


@dataclass
class ChunkResult:
    request: ChunkRequest
    actions: np.ndarray  # (n_action_steps, action_dim)
    done_time: float


def _call_policy(infer: ActFn, obs: np.ndarray, n_action_steps: int, action_dim: int) -> np.ndarray:
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
                actions = _call_policy(self._infer, req.obs, self._n, self._a)
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
        actions = _call_policy(self._infer, request.obs, self._n, self._a)
        self._pending = ChunkResult(request, actions, request.request_time + float(self._latency(request)))
        return True

    def poll(self) -> ChunkResult | None:
        if self._pending is not None and self._clock.now() >= self._pending.done_time:
            res, self._pending = self._pending, None
            return res
        return None

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        self._pending = None


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class ControllerConfig:
    """Settings of the loop (see the module doc for the semantics).

    control_hz: tick rate. replan_every: ticks between chunk requests (None = n_action_steps // 2,
    at least 1). deadline_s: time after a request by which its chunk should arrive (None = one
    period). ensemble_k: ACT temporal-ensembling constant (None = off). spin_s: busy-wait part
    of each wait of a ``RealClock`` built by the controller.
    """

    control_hz: float = 10.0
    replan_every: int | None = None
    deadline_s: float | None = None
    ensemble_k: float | None = None
    spin_s: float = 0.001

    def __post_init__(self):
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ValueError(f"control_hz must be a positive number, got {self.control_hz}")
        if self.replan_every is not None and (isinstance(self.replan_every, bool) or int(self.replan_every) < 1):
            raise ValueError(f"replan_every must be a positive number of ticks, got {self.replan_every}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if self.ensemble_k is not None and not math.isfinite(self.ensemble_k):
            raise ValueError(f"ensemble_k must be finite or None, got {self.ensemble_k}")

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz

    @property
    def deadline(self) -> float:
        return self.dt if self.deadline_s is None else float(self.deadline_s)


@dataclass
class ControlStats:
    """What happened in one run; times in seconds unless named _ms."""

    ticks: int = 0  # ticks executed (an action sent)
    overrun_ticks: int = 0  # ticks skipped because the loop woke more than a period late
    requests: int = 0
    chunks_received: int = 0
    deadline_misses: int = 0  # chunks that arrived after their deadline, or never (still pending at the end)
    stale_dropped: int = 0  # actions dropped because their tick had passed when the chunk arrived
    chunks_dropped_whole: int = 0
    fallback_previous: int = 0  # ticks with a request overdue, served from an older chunk
    fallback_hold: int = 0  # ticks with a request overdue and no chunk left: last action held
    hold_actions: int = 0  # every tick that held the last action (also with no request overdue)
    ensembled_actions: int = 0
    sources: list[str] = field(default_factory=list)  # per tick: chunk / ensemble / hold
    sent_times: list[float] = field(default_factory=list)  # when send_action was called, per tick
    wake_lateness: list[float] = field(default_factory=list)  # wake time - scheduled tick time
    inference_latency: list[float] = field(default_factory=list)  # request -> result, per chunk
    first_chunk_latency: float | None = None  # the synchronous chunk before tick 0

    def summary(self, dt: float) -> dict[str, Any]:
        """JSON-ready numbers: counts, achieved rate, jitter and latency quantiles in ms."""
        sent = np.asarray(self.sent_times)
        periods = np.diff(sent) if len(sent) > 1 else np.zeros(0)
        late = np.asarray(self.wake_lateness) * 1e3
        lat = np.asarray(self.inference_latency) * 1e3

        def q(a: np.ndarray, p: float) -> float | None:
            return float(np.percentile(a, p)) if len(a) else None

        return {
            "ticks": self.ticks, "overrun_ticks": self.overrun_ticks, "requests": self.requests,
            "chunks_received": self.chunks_received, "deadline_misses": self.deadline_misses,
            "stale_dropped": self.stale_dropped, "chunks_dropped_whole": self.chunks_dropped_whole,
            "fallback_previous": self.fallback_previous, "fallback_hold": self.fallback_hold,
            "hold_actions": self.hold_actions, "ensembled_actions": self.ensembled_actions,
            "target_hz": 1.0 / dt,
            "achieved_hz": float((len(sent) - 1) / (sent[-1] - sent[0])) if len(sent) > 1 and sent[-1] > sent[0] else None,
            "period_jitter_ms_std": float(periods.std() * 1e3) if len(periods) else None,
            "period_ms_max": float(periods.max() * 1e3) if len(periods) else None,
            "wake_lateness_ms_p50": q(late, 50), "wake_lateness_ms_p99": q(late, 99),
            "wake_lateness_ms_max": float(late.max()) if len(late) else None,
            "inference_ms_p50": q(lat, 50), "inference_ms_p99": q(lat, 99),
        }


class RealTimeController:
    """Drive a robot (or a simulator) with a chunked policy at a fixed rate.

    Args:
        infer: the policy as an ``ActFn``: {key: (1, n_obs_steps, *shape)} -> (1, n_action_steps,
            action_dim); e.g. ``ExportedPolicy.load(path)`` or ``policy.act_fn(steps=1)``.
        shape_meta: the policy's observation keys and action (``ShapeMeta``, or its dict).
        n_obs_steps, n_action_steps: the policy's chunking.
        config: ``ControllerConfig``.
        clock: ``RealClock`` (default) or a ``FakeClock``.
        worker: factory ``(infer, n_action_steps, action_dim, clock) -> worker``; default a
            ``ThreadedInference``. Tests pass an ``InlineInference`` with simulated latency.
    """

    def __init__(self, infer: ActFn, shape_meta: ShapeMeta | Mapping[str, Any], n_obs_steps: int,
                 n_action_steps: int, config: ControllerConfig | None = None, clock: Clock | None = None,
                 worker: Callable[..., Any] | None = None):
        self.infer = infer
        self.shape_meta = ShapeMeta.from_dict(shape_meta)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps, self.action_dim = int(n_action_steps), self.shape_meta.action_dim
        self.config = config or ControllerConfig()
        self.clock = clock or RealClock(self.config.spin_s)
        self.replan_every = self.config.replan_every or max(1, self.n_action_steps // 2)
        self._make_worker = worker or ThreadedInference

    @classmethod
    def for_exported(cls, policy: Any, config: ControllerConfig | None = None, **kwargs) -> "RealTimeController":
        """A controller for an ``ExportedPolicy`` (shapes read from its metadata)."""
        m = policy.metadata
        return cls(policy, m["shape_meta"], m["n_obs_steps"], m["n_action_steps"], config, **kwargs)

    def run(self, get_observation: Callable[[], Any], send_action: Callable[[np.ndarray], Any],
            max_ticks: int | None = None, duration_s: float | None = None,
            should_stop: Callable[[], bool] | None = None) -> ControlStats:
        """Run until ``max_ticks`` ticks, ``duration_s`` seconds or ``should_stop()`` (checked after
        each action). ``get_observation() -> {key: (*shape)}`` (one step, the policy's shape_meta
        keys: camera frames as uint8 (H, W, 3)); ``send_action(action (action_dim,))``.

        Before tick 0 the first chunk is computed synchronously from the first observation, so
        tick 0 sends its action 0. Returns the run's ``ControlStats``.
        """
        if max_ticks is None and duration_s is None and should_stop is None:
            raise ValueError("give max_ticks, duration_s or should_stop, or the loop never ends")
        cfg, clock, dt = self.config, self.clock, self.config.dt
        if max_ticks is None:
            max_ticks = math.inf if duration_s is None else max(1, int(round(duration_s / dt)))
        stats = ControlStats()
        history = ObservationHistory(self.n_obs_steps, self.shape_meta)
        scheduler = ActionScheduler(self.action_dim, cfg.ensemble_k)

        history.reset(get_observation())
        t_first = clock.now()
        first = _call_policy(self.infer, history.array(), self.n_action_steps, self.action_dim)
        stats.first_chunk_latency = clock.now() - t_first
        scheduler.add_chunk(first, obs_tick=0, current_tick=0, seq=0)
        seq, last_request_tick = 0, 0
        pending: ChunkRequest | None = None
        worker = self._make_worker(self.infer, self.n_action_steps, self.action_dim, clock)
        t0 = clock.now()
        tick = 0
        try:
            while tick < max_ticks:
                clock.sleep_until(t0 + tick * dt)
                woke = clock.now()
                late = woke - (t0 + tick * dt)
                if late >= dt:  # stalled: skip the missed ticks instead of bursting through them
                    skip = int(min(late // dt, max_ticks - tick))
                    stats.overrun_ticks += skip
                    tick += skip
                    if tick >= max_ticks:
                        break
                    late = woke - (t0 + tick * dt)
                stats.wake_lateness.append(late)
                if tick > 0:
                    history.push(get_observation())

                result = worker.poll()
                if result is not None:
                    req = result.request
                    stats.chunks_received += 1
                    stats.inference_latency.append(result.done_time - req.request_time)
                    if result.done_time > req.deadline_time + _EPS:
                        stats.deadline_misses += 1
                    dropped = scheduler.add_chunk(result.actions, req.obs_tick, tick, req.seq)
                    stats.stale_dropped += dropped
                    stats.chunks_dropped_whole += int(dropped == len(result.actions))
                    pending = None

                action, source, _ = scheduler.action_at(tick)
                # overdue from the tick at (or after) the deadline: with the default deadline of one
                # period, a chunk not in by the next tick is overdue at that tick
                overdue = pending is not None and t0 + tick * dt >= pending.deadline_time - _EPS
                if source == "hold":
                    stats.hold_actions += 1
                if overdue:
                    if source == "hold":
                        stats.fallback_hold += 1
                    else:
                        stats.fallback_previous += 1
                stats.ensembled_actions += int(source == "ensemble")
                if action is None:  # unreachable after the synchronous first chunk; kept as a guard
                    raise RuntimeError("no action to send: no chunk has arrived yet")
                send_action(action)
                stats.sent_times.append(clock.now())
                stats.sources.append(source)
                stats.ticks += 1
                if should_stop is not None and should_stop():
                    break

                if tick - last_request_tick >= self.replan_every and not worker.busy:
                    seq += 1
                    # the request's time is the tick's scheduled time: the observation belongs to it
                    req = ChunkRequest(seq, history.array(), tick, t0 + tick * dt, t0 + tick * dt + cfg.deadline)
                    if worker.submit(req):
                        pending, last_request_tick = req, tick
                        stats.requests += 1
                tick += 1
        finally:
            if pending is not None and clock.now() > pending.deadline_time + _EPS:
                stats.deadline_misses += 1  # never arrived in time
            worker.close(wait=True, timeout=60.0)
        return stats


# ---------------------------------------------------------------------------------------------- step budget
def measure_step_latencies(make_infer: Callable[[int], ActFn], obs: dict[str, np.ndarray],
                           steps: Sequence[int] = DYADIC_STEPS, iters: int = 20, warmup: int = 2,
                           quantile: float = 99.0, budget_s: float | None = None,
                           clock: Clock | None = None) -> dict[int, dict[str, float]]:
    """Chunk latency of ``make_infer(s)(obs)`` for each step count s (ascending), batch 1.

    Returns {s: {"p50_s", "q_s" (the ``quantile``), "n"}}. With ``budget_s``, stops after the
    first step count whose quantile exceeds it: latency grows with the step count, so larger
    counts cannot fit either (saves the slowest measurements).
    """
    clock = clock or RealClock(spin_s=0.0)
    out: dict[int, dict[str, float]] = {}
    for s in sorted(steps):
        infer = make_infer(s)
        for _ in range(warmup):
            infer(obs)
        times = []
        for _ in range(iters):
            t = clock.now()
            infer(obs)
            times.append(clock.now() - t)
        arr = np.asarray(times)
        out[s] = {"p50_s": float(np.median(arr)), "q_s": float(np.percentile(arr, quantile)), "n": len(arr),
                  "quantile": quantile}
        if budget_s is not None and out[s]["q_s"] > budget_s:
            break
    return out


def choose_steps(latency_s: Mapping[int, float], budget_s: float, margin_s: float = 0.0) -> int:
    """The largest step count whose latency fits ``budget_s - margin_s``.

    ``latency_s``: {steps: seconds} (a high quantile, e.g. p99). Raises when none fits, naming
    the fastest option, rather than silently running a controller that misses every deadline.
    """
    if not latency_s:
        raise ValueError("no latencies measured")
    limit = budget_s - margin_s
    fits = [s for s, t in latency_s.items() if t <= limit]
    if not fits:
        s_min = min(latency_s, key=lambda s: latency_s[s])
        raise ValueError(f"no step count fits the latency budget {budget_s * 1e3:.1f} ms - margin "
                         f"{margin_s * 1e3:.1f} ms: the fastest, {s_min} step(s), takes {latency_s[s_min] * 1e3:.1f} ms; "
                         "lower the control rate, raise the deadline or use a faster machine")
    return max(fits)


def auto_steps(make_infer: Callable[[int], ActFn], obs: dict[str, np.ndarray], deadline_s: float, margin_s: float = 0.005,
               steps: Sequence[int] = DYADIC_STEPS, quantile: float = 99.0, iters: int = 20,
               clock: Clock | None = None) -> tuple[int, dict[int, dict[str, float]]]:
    """Measure (``measure_step_latencies``) and pick (``choose_steps``) for a deadline; returns
    (steps, the latency table)."""
    budget = deadline_s - margin_s
    table = measure_step_latencies(make_infer, obs, steps, iters=iters, quantile=quantile, budget_s=budget,
                                   clock=clock)
    return choose_steps({s: r["q_s"] for s, r in table.items()}, deadline_s, margin_s), table
