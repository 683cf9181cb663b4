"""The task, once: a segment is one second of the front camera at 30 FPS, and the answer is the
ego motion at each of the 30 frames of the next second. Every stage that counts frames, pairs
or time steps reads them from here."""

from __future__ import annotations

CLIP_FPS = 30
"""The camera's nominal frame rate; a segment's mp4 plays at it."""
CLIP_FRAMES = 30
"""Frames in a segment: one second."""
HORIZON_PAIRS = 30
"""(speed, curvature) pairs in an answer: one per frame of the next second."""
STEP_SECONDS = 1.0 / CLIP_FPS
"""Time between two pairs of an answer (and two frames of a segment)."""
HORIZON_SECONDS = HORIZON_PAIRS * STEP_SECONDS
"""How far ahead an answer reaches: 1 s."""
