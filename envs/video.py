"""Episode videos for any runner: a wrapper that streams rendered frames to an H.264 mp4 file.

H.264 (yuv420p) plays in browsers and in wandb; frames are encoded as they come (a 300-step episode
held in memory at 256 px is ~60 MB). PyAV (``av``, installed with the ``pusht`` and ``data`` extras)
encodes; without it videos are skipped with a warning, never an error, so an evaluation never fails
for want of a codec.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

CODEC = "libx264"


class VideoRecorder(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Writes ``env.render()`` (H, W, 3) uint8 RGB after reset and every step, between ``start`` and ``stop``.

    Sits below ``MultiStepWrapper`` so every env step is filmed, not just chunk ends.
    The env must have been created with ``render_mode="rgb_array"``.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self._path: Path | None = None
        self._fps = 10.0
        self._container = None
        self._stream = None
        self.n_frames = 0

    @property
    def recording(self) -> bool:
        return self._path is not None

    def start(self, path: str | Path, fps: float) -> bool:
        """Record from the next reset on; False (with a warning) when PyAV is missing."""
        self.stop()
        try:
            import av  # noqa: F401
        except ImportError:
            warnings.warn("PyAV is not installed; videos skipped (pip install av)", stacklevel=2)
            return False
        self._path, self._fps, self.n_frames = Path(path), float(fps), 0
        return True

    def stop(self) -> Path | None:
        """Finish the file; returns its path if any frame was written."""
        path, written = self._path, self._container is not None and self.n_frames > 0
        if self._container is not None:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
            self._container.close()
        self._path, self._container, self._stream = None, None, None
        return path if written else None

    def _grab(self):
        if self._path is None:
            return
        frame = self.env.render()
        if frame is None:
            raise RuntimeError("VideoRecorder needs an env created with render_mode='rgb_array'")
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        import av

        if self._container is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._container = av.open(str(self._path), "w")
            self._stream = self._container.add_stream(CODEC, rate=round(self._fps))
            # yuv420p halves the chroma resolution: H.264 wants even sides
            self._stream.width, self._stream.height = w - w % 2, h - h % 2
            self._stream.pix_fmt = "yuv420p"
        frame = frame[:self._stream.height, :self._stream.width]
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.n_frames += 1

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self._grab()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._grab()
        return out

    def close(self):
        self.stop()
        super().close()
