"""Episode videos for any runner: a wrapper that streams rendered frames to an mp4 file.

Frames are written as they come (a 300-step episode held in memory at 256 px is ~60 MB).
OpenCV is optional (it ships with gym-pusht): without it, or without a working 'mp4v'
encoder, videos are skipped with a warning, never an error, so an evaluation never fails
for want of a codec.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np


class VideoRecorder(gym.Wrapper):
    """Writes ``env.render()`` (H, W, 3) uint8 RGB after reset and every step, between ``start`` and ``stop``.

    Sits below ``MultiStepWrapper`` so every env step is filmed, not just chunk ends.
    The env must have been created with ``render_mode="rgb_array"``.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._path: Path | None = None
        self._fps = 10.0
        self._writer = None
        self.n_frames = 0

    @property
    def recording(self) -> bool:
        return self._path is not None

    def start(self, path: str | Path, fps: float) -> bool:
        """Record from the next reset on; False (with a warning) when OpenCV is missing."""
        self.stop()
        try:
            import cv2  # noqa: F401
        except ImportError:
            warnings.warn("opencv-python is not installed; videos skipped (pip install opencv-python)", stacklevel=2)
            return False
        self._path, self._fps, self.n_frames = Path(path), float(fps), 0
        return True

    def stop(self) -> Path | None:
        """Close the file; returns its path if any frame was written."""
        path, written = self._path, self._writer is not None and self.n_frames > 0
        if self._writer is not None:
            self._writer.release()
        self._path, self._writer = None, None
        return path if written else None

    def _grab(self):
        if self._path is None:
            return
        frame = self.env.render()
        if frame is None:
            raise RuntimeError("VideoRecorder needs an env created with render_mode='rgb_array'")
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        import cv2

        if self._writer is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(self._path), cv2.VideoWriter_fourcc(*"mp4v"), self._fps, (w, h))
            if not writer.isOpened():
                warnings.warn(f"cv2.VideoWriter could not open {self._path} with codec 'mp4v'; video skipped")
                self._path = None
                return
            self._writer = writer
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))  # OpenCV wants BGR
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
