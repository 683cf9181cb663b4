"""The cameras' calibration and their rendered views of a textured ground plane, as mp4."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import av
import numpy as np
import pandas as pd

from qwenvl.standins.motion import FPS

# The front wide camera as rendered: an f-theta (fisheye) lens of 120 degrees across, 1.5 m
# ahead of the rear axle and 1.5 m up, pitched a little down so the ground fills the frame.
CAMERA_HEIGHT_M = 1.5
CAMERA_FORWARD_M = 1.5
CAMERA_HFOV_DEG = 120.0
CAMERA_PITCH_DEG = 6.0
GROUND_RANGE_M = 120.0  # rows seeing ground farther than this get the flat haze colour
TEXEL_M = 0.125
TEXTURE_SIZE = 512  # texels per side: a 64 m tile, a power of two so wrapping is a bit mask
TILE_M = TEXEL_M * TEXTURE_SIZE
MIP_LEVELS = 6
SKY_TOP = (70, 120, 190)
SKY_HORIZON = (190, 205, 220)


@dataclass(frozen=True)
class Mount:
    """Where a camera sits on the rig and how wide it sees: its yaw (degrees, + = left of
    ahead), its horizontal field of view, and its place (metres ahead of the rear axle, to
    the left)."""

    yaw_deg: float = 0.0
    hfov_deg: float = CAMERA_HFOV_DEG
    x: float = CAMERA_FORWARD_M
    y: float = 0.0


# The dataset's seven cameras as rendered here (their names are the dataset's): the cross
# cameras look sideways, the rear ones back over the shoulders, the tele cameras narrow.
MOUNTS = {
    "camera_front_wide_120fov": Mount(),
    "camera_front_tele_30fov": Mount(hfov_deg=30.0, x=1.6),
    "camera_cross_left_120fov": Mount(yaw_deg=90.0, x=2.0, y=0.9),
    "camera_cross_right_120fov": Mount(yaw_deg=-90.0, x=2.0, y=-0.9),
    "camera_rear_left_70fov": Mount(yaw_deg=150.0, hfov_deg=70.0, x=2.0, y=0.9),
    "camera_rear_right_70fov": Mount(yaw_deg=-150.0, hfov_deg=70.0, x=2.0, y=-0.9),
    "camera_rear_tele_30fov": Mount(yaw_deg=180.0, hfov_deg=30.0, x=-1.0),
}


@dataclass(frozen=True)
class SyntheticCamera:
    """A rendered camera, in the dataset's own calibration schema: an f-theta intrinsics row
    (equidistant, the pixel radius f x the ray's angle from the axis, f fitting its field of
    view across the width) and the camera's pose on the rig. Frames are rendered through the
    devkit's FThetaCameraModel built from that row, so the calibration written with a clip is
    exactly how its pixels were made (pixel centres at integer + 0.5). The front wide camera
    by default."""

    width: int
    height: int
    mount: Mount = Mount()

    @property
    def focal(self) -> float:
        return (self.width / 2) / math.radians(self.mount.hfov_deg / 2)

    def intrinsics(self) -> dict:
        row = {"width": self.width, "height": self.height}
        row.update(cx=self.width / 2, cy=self.height / 2)
        row.update({f"fw_poly_{i}": float(i == 1) * self.focal for i in range(5)})
        row.update({f"bw_poly_{i}": float(i == 1) / self.focal for i in range(5)})
        return row

    def rotation(self) -> np.ndarray:
        """(3, 3) camera axes (x right, y down, z out of the lens) as rig vectors (x forward,
        y left, z up), pitched CAMERA_PITCH_DEG down, then turned by the mount's yaw."""
        p = math.radians(CAMERA_PITCH_DEG)
        right, down = [0.0, -1.0, 0.0], [-math.sin(p), 0.0, -math.cos(p)]
        ahead = np.array([right, down, [math.cos(p), 0.0, -math.sin(p)]]).T
        yaw = math.radians(self.mount.yaw_deg)
        c, s = math.cos(yaw), math.sin(yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ ahead

    def extrinsics(self) -> dict:
        from scipy.spatial.transform import Rotation

        qx, qy, qz, qw = Rotation.from_matrix(self.rotation()).as_quat()
        x, y = self.mount.x, self.mount.y
        return dict(qx=qx, qy=qy, qz=qz, qw=qw, x=x, y=y, z=CAMERA_HEIGHT_M)

    def model(self):
        from physical_ai_av.utils.camera_models import FThetaCameraModel

        return FThetaCameraModel.from_camera_row(pd.Series(self.intrinsics()))


def _periodic_noise(rng: np.random.Generator, size: int, wavelength_texels: float) -> np.ndarray:
    """Zero-mean unit-std noise that tiles seamlessly (low-passed white noise via the FFT)."""
    f = np.fft.fftfreq(size)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    spectrum = np.fft.fft2(rng.standard_normal((size, size)))
    field_ = np.fft.ifft2(spectrum * np.exp(-f2 * (wavelength_texels**2) * 2.0)).real
    return (field_ - field_.mean()) / field_.std()


def _ground_rgb(rng: np.random.Generator) -> np.ndarray:
    """(N, N, 3) float texture: asphalt with blotches, coloured patches, lanes and cross lines."""
    n = TEXTURE_SIZE
    base = np.array([98.0, 98.0, 104.0]) + rng.uniform(-15, 15, size=3)
    rgb = np.broadcast_to(base, (n, n, 3)).copy()
    rgb += 22.0 * _periodic_noise(rng, n, 40.0)[..., None]
    rgb += 3.0 * _periodic_noise(rng, n, 1.5)[..., None]  # fine grain: texture up close
    patches = _periodic_noise(rng, n, 24.0) > 1.0
    rgb[patches] = 0.5 * rgb[patches] + 0.5 * rng.uniform(40, 200, size=3)
    ix, iy = np.meshgrid(np.arange(n), np.arange(n))  # rows are world y, columns world x
    lanes = (iy % 32 < 2) & (ix % 64 < 24)  # dashed lines every 4 m across, 3 m dash in 8 m
    cross = ix % 128 < 3  # a line across the road every 16 m: forward motion is obvious
    rgb[lanes] = (235, 235, 225)
    rgb[cross] = (220, 200, 60)
    return np.clip(rgb, 0, 255)


def ground_texture(rng: np.random.Generator) -> np.ndarray:
    """(texels, 3) uint8 RGB: a seeded ground tile and its box-filtered mip levels, row-major."""
    rgb = _ground_rgb(rng)
    levels = []
    for _ in range(MIP_LEVELS):
        levels.append(np.round(rgb).astype(np.uint8).reshape(-1, 3))
        n = rgb.shape[0] // 2
        rgb = rgb.reshape(n, 2, n, 2, 3).mean(axis=(1, 3))
    return np.concatenate(levels)


def _mip_offsets() -> np.ndarray:
    sizes = [(TEXTURE_SIZE >> level) ** 2 for level in range(MIP_LEVELS)]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)


def _pixel_rays(camera: SyntheticCamera) -> np.ndarray:
    """(H, W, 3) unit ray directions in the rig frame (x forward, y left, z up) per pixel,
    through the devkit's f-theta model of the camera."""
    columns, rows = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    rays = camera.model().pixel2ray(np.stack([columns, rows], axis=-1))
    return rays @ camera.rotation().T


@dataclass(frozen=True)
class _GroundGeometry:
    """Per-resolution constants: which pixels see the ground, where, and at which mip level."""

    pixels: np.ndarray  # flat indices of the pixels that see the textured ground
    u: np.ndarray  # float32 their ground point along the rig's x axis, in texels of the level
    v: np.ndarray  # the same along y
    scale: np.ndarray  # float32 texels per metre at the pixel's mip level
    mask: np.ndarray  # int32 (texels per side at the level) - 1
    shift: np.ndarray  # int32 log2(texels per side)
    base: np.ndarray  # int32 offset of the level in the packed texture
    elevation: np.ndarray  # (H, W) sine of each ray's elevation (the sky and the far haze)


def _mip_level(ground: np.ndarray) -> np.ndarray:
    """Level whose texel is about one pixel's ground footprint (geometric mean of both axes)."""
    du = np.linalg.norm(np.gradient(ground, axis=1), axis=-1)
    dv = np.linalg.norm(np.gradient(ground, axis=0), axis=-1)
    footprint = np.sqrt(du * dv) / TEXEL_M
    return np.clip(np.floor(np.log2(np.maximum(footprint, 1.0))), 0, MIP_LEVELS - 1).astype(int)


def _background(elevation: np.ndarray, haze: np.ndarray) -> np.ndarray:
    """uint8 RGB: a blue gradient above the horizon, flat haze on the ground beyond range."""
    w = np.clip(elevation / 0.6, 0.0, 1.0)[..., None] ** 0.7
    sky = (1 - w) * np.array(SKY_HORIZON) + w * np.array(SKY_TOP)
    sky[elevation < 0] = haze
    return np.round(sky).astype(np.uint8)


def ground_points(camera: SyntheticCamera) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 2) the ground point (rig x, y in metres) each pixel sees, (H, W) whether it
    sees the ground within GROUND_RANGE_M), as the renderer draws them."""
    rays = _pixel_rays(camera)
    down = np.minimum(rays[..., 2], -1e-9)
    reach = CAMERA_HEIGHT_M / -down
    ground = np.array([camera.mount.x, camera.mount.y]) + rays[..., :2] * reach[..., None]
    near = (rays[..., 2] < 0) & (reach * np.linalg.norm(rays[..., :2], axis=-1) < GROUND_RANGE_M)
    return ground, near


@lru_cache(maxsize=16)
def _ground_geometry(camera: SyntheticCamera) -> _GroundGeometry:
    ground, near = ground_points(camera)
    rays = _pixel_rays(camera)
    pixels = np.flatnonzero(near)
    level = _mip_level(ground).ravel()[pixels]
    scale = (1.0 / (TEXEL_M * 2.0**level)).astype(np.float32)
    g = ground.reshape(-1, 2)[pixels]
    return _GroundGeometry(
        pixels=pixels,
        u=(g[:, 0] * scale).astype(np.float32),
        v=(g[:, 1] * scale).astype(np.float32),
        scale=scale,
        mask=((TEXTURE_SIZE >> level) - 1).astype(np.int32),
        shift=(int(math.log2(TEXTURE_SIZE)) - level).astype(np.int32),
        base=_mip_offsets()[level],
        elevation=rays[..., 2] / np.linalg.norm(rays, axis=-1),
    )


class GroundRenderer:
    """Renders a camera's view (the front camera's by default) of an endless textured ground
    plane with a sky."""

    def __init__(
        self, width: int, height: int, texture: np.ndarray, mount: Mount = Mount()
    ) -> None:
        self.width, self.height = width, height
        self.texture = texture
        self.geometry = _ground_geometry(SyntheticCamera(width, height, mount))
        # Far ground fades to the texture's mean colour, a little washed out towards the sky.
        haze = 0.6 * texture[_mip_offsets()[-1] :].mean(axis=0) + 0.4 * np.array(SKY_HORIZON)
        self.background = _background(self.geometry.elevation, haze)  # where no ground is

    def render(self, x: float, y: float, yaw: float) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame seen from pose (x, y, yaw) in the anchor frame."""
        g = self.geometry
        c, s = math.cos(yaw), math.sin(yaw)
        # Wrap the position into one tile and shift it by four so texel indices stay
        # non-negative: the textured ground lies within GROUND_RANGE_M (+ the camera's offset)
        # of the rig, under 4 tiles.
        ox, oy = x % TILE_M + 4 * TILE_M, y % TILE_M + 4 * TILE_M
        wx = g.u * c - g.v * s + ox * g.scale
        wy = g.u * s + g.v * c + oy * g.scale
        ix = wx.astype(np.int32) & g.mask
        iy = wy.astype(np.int32) & g.mask
        frame = self.background.copy()
        frame.reshape(-1, 3)[g.pixels] = self.texture[(iy << g.shift) + ix + g.base]
        return frame


def encode_mp4(frames: Iterable[np.ndarray], width: int, height: int, fps: int = FPS) -> bytes:
    """H.264 (libx264, yuv420p) mp4 of RGB frames, one per pts tick at `fps`; deterministic."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        # Diamond search, the cheapest subpel pass and no B-frames halve the encode (which
        # dominates generation time) for ~15% more bytes. No B-frames also keeps the output
        # reproducible: with B-frames and MB-tree, x264's asm gave a different stream on a
        # process's first encode of small frames (e.g. 160x96).
        options = {"preset": "veryfast", "crf": "23", "x264-params": "me=dia:subme=1:bframes=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # multi-threaded x264 output can vary run to run
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()
