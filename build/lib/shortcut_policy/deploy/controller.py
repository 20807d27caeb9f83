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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..shape_meta import ShapeMeta
from .clocks import Clock, RealClock
from .scheduling import ActionScheduler, ObservationHistory
from .workers import ActFn, ChunkRequest, ThreadedInference, call_policy

_EPS = 1e-9  # seconds: tick times are sums of floats; equal instants must compare equal


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
            action_dim); e.g. ``ExportedPolicy.load(path)`` or ``policy.act_fn(1)``.
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
        first = call_policy(self.infer, history.array(), self.n_action_steps, self.action_dim)
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
