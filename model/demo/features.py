"""Demo video and text encoders with NO learned weights (the demo/testing stack).

They implement the encoder protocol of docs/ARCHITECTURE.md with hand-made features, so the
whole pipeline runs on a laptop without downloading CLIP or Synchformer. A network trained on
them is a working toy: it can follow cuts, flashes and motion, not recognise a dog.

Clip features (8 fps, frames meant to be 384 x 384; any size works because every frame is
first area-pooled to a 32 x 32 analysis grid), one per frame:
    soft colour histogram (8 bins per channel) + 4 x 4 colour layout + edge statistics
    (gradient energy on a 4 x 4 grid, an 8-bin orientation histogram) + brightness mean/std +
    the foreground's colour and amount (what differs from the window's per-pixel median: a small
    object's look, which the whole-frame statistics drown in its background), projected to
    `clip_dim` by a fixed seeded random orthogonal matrix and L2-normalised.

Sync features (25 fps, frames meant to be 224 x 224; pooled to 32 x 32): as many tokens as
Synchformer gives for the window (S = (T - 16) // 8 + 1 segments of 8, so the network's shapes
are MMAudio's), but laid out in TIME ORDER: token i describes the moment (i + 0.5) * D / (S * 8)
of a window of D seconds (`sync_token_times`), 24 tokens per second, so the network's
nearest-exact resampling to the latent length lands every latent frame within half a token
(+-21 ms) of the moment its token describes. (Synchformer's segment-major layout would put it
up to +-296 ms away: MMAudio's contextual tokens can learn to undo that, frame-local hand-made
features through a tiny network cannot.) Each token is a per-frame descriptor interpolated
linearly at its moment (frame k shows time k / 25):
    the change into the frame (absolute luma difference on a 4 x 4 grid, signed brightness and
    colour change, the strongest cell), its coarse appearance, and what a listener cares
    about: the foreground (what differs from the window's per-pixel median, i.e. the static
    background) -- its amount and the onset of new foreground (a flash, an appearance), its
    centroid, the centroid's velocity and acceleration (a bounce or a wall hit reverses the
    velocity: a peak of |acceleration| at the contact frame), and the colour of what changed
    (foreground pixels weighted by their change: the look of the object making the event).
Projected by a fixed orthogonal matrix, not normalised: the magnitude carries the amount of
motion.

Text features: a hashed bag of words. Word i of the prompt (lower-cased, split on non-word
characters) sits at position i as a unit vector drawn from a generator seeded by a hash of the
word; words past the last position are summed into it. Unused positions and the empty prompt
are zeros.

Deterministic: the same frames give the same features, bit for bit, on the same device and
torch build (no random state, no atomics, hashes from hashlib, not Python's salted hash()).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

CLIP_FPS = 8
CLIP_SIZE = 384
SYNC_FPS = 25
SYNC_SIZE = 224
SEGMENT_FRAMES = 16
SEGMENT_STRIDE = 8
TOKENS_PER_SEGMENT = 8

_CLIP_GRID = 32  # analysis resolution of a clip frame
_SYNC_GRID = 32  # analysis resolution of a sync frame (foreground centroids)
_CHANGE_GRID = 16  # resolution of the change and appearance descriptors
_FG_FLOOR = 0.06  # summed |RGB - background| below this is compression noise, not foreground
_HIST_BINS = 8
_ORIENT_BINS = 8
_LUMA = (0.299, 0.587, 0.114)
_FRAME_CHUNK = 64  # frames converted to float at once (bounds memory for long clips)
_WORD = re.compile(r"[\w']+")

_FOREGROUND_DIM = 3 + 1
CLIP_RAW_DIM = 3 * _HIST_BINS + 3 * 16 + 16 + _ORIENT_BINS + 2 + _FOREGROUND_DIM
_TRANSITION_DIM = 16 + 1 + 3 + 1
_APPEARANCE_DIM = 3 * 4 + 1
_EVENT_DIM = 2 + 2 + 2 + 2 + 1 + 3 + 3 + 2 + 3 + 3
_IMPACT_SCALE = 1.5  # |acceleration| and onset terms (as scaled below) of a clear bounce, hit or flash
_IMPACT_DECAY = 0.8  # per 25 fps frame: an impact's trace halves in about 0.12 s, as a struck sound fades
_IMPACT_HOLD = 8  # frames an impact's trace lasts (0.32 s, down to a fifth): a change stays local
SYNC_RAW_DIM = _TRANSITION_DIM + _APPEARANCE_DIM + _EVENT_DIM


def num_sync_segments(num_frames: int) -> int:
    """Synchformer segments in `num_frames` frames: 16-frame windows with stride 8."""
    return 0 if num_frames < SEGMENT_FRAMES else (num_frames - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1


def sync_token_times(num_frames: int, fps: float = SYNC_FPS) -> torch.Tensor:
    """Seconds (from the window start) of the moment each sync token describes: as many tokens
    as Synchformer gives for `num_frames` frames, evenly spaced in time order."""
    tokens = num_sync_segments(num_frames) * TOKENS_PER_SEGMENT
    return (torch.arange(tokens, dtype=torch.float64) + 0.5) * (num_frames / fps) / max(tokens, 1)


def orthogonal_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed (in_dim, out_dim) matrix with orthonormal columns (or rows when in_dim < out_dim),
    so projecting never shrinks nor amplifies differences. QR of a seeded Gaussian in float64,
    signs fixed by R's diagonal so the result does not depend on the LAPACK sign convention."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    big, small = max(in_dim, out_dim), min(in_dim, out_dim)
    q, r = torch.linalg.qr(torch.randn(big, small, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return (q if in_dim >= out_dim else q.T).to(torch.float32).contiguous()


class DemoEncoders(nn.Module):
    """Encoder protocol (clip / sync / text features) from fixed, hand-made features.

    Dimensions are arguments so a small network fits; the defaults suit the demo bundle.
    Holds no learned weights: its state dict is empty and its projections derive from `seed`.
    """

    clip_fps = CLIP_FPS
    clip_size = CLIP_SIZE
    sync_fps = SYNC_FPS
    sync_size = SYNC_SIZE

    def __init__(
        self,
        clip_dim: int = 64,
        sync_dim: int = 64,
        text_dim: int = 64,
        text_seq_len: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("clip_dim", clip_dim),
            ("sync_dim", sync_dim),
            ("text_dim", text_dim),
            ("text_seq_len", text_seq_len),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.clip_dim = clip_dim
        self.sync_dim = sync_dim
        self.text_dim = text_dim
        self.text_seq_len = text_seq_len
        self.seed = seed
        self.register_buffer("clip_projection", orthogonal_projection(CLIP_RAW_DIM, clip_dim, seed), persistent=False)
        self.register_buffer(
            "sync_projection", orthogonal_projection(SYNC_RAW_DIM, sync_dim, seed + 1), persistent=False
        )

    @property
    def device(self) -> torch.device:
        return self.clip_projection.device

    # -- clip ------------------------------------------------------------------------------

    @torch.no_grad()
    def clip_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, T, H, W, 3) at 8 fps -> (B, T, clip_dim), unit length per frame."""
        _check_frames(frames, "clip")
        b, t = frames.shape[:2]
        if t == 0:
            return torch.zeros(b, 0, self.clip_dim, device=self.device)
        pooled = _pooled_frames(frames.to(self.device), _CLIP_GRID)  # (B, T, 3, g, g)
        raw = torch.cat([_clip_descriptor(pooled.flatten(0, 1)), _foreground_look(pooled).flatten(0, 1)], dim=-1)
        out = raw @ self.clip_projection
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return out.reshape(b, t, self.clip_dim)

    # -- sync ------------------------------------------------------------------------------

    @torch.no_grad()
    def sync_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, T, H, W, 3) at 25 fps, T >= 16 -> (B, S * 8, sync_dim),
        S = (T - 16) // 8 + 1; token i describes the moment `sync_token_times(T)[i]`."""
        _check_frames(frames, "sync")
        b, t = frames.shape[:2]
        segments = num_sync_segments(t)
        if segments == 0:
            raise ValueError(
                f"sync features need at least {SEGMENT_FRAMES} frames ({SEGMENT_FRAMES / SYNC_FPS:.2f} s at "
                f"{SYNC_FPS} fps), got {t}: decode a longer window"
            )
        pooled = _pooled_frames(frames.to(self.device), _SYNC_GRID)  # (B, T, 3, g, g)
        coarse = F.adaptive_avg_pool2d(pooled.flatten(0, 1), _CHANGE_GRID).reshape(b, t, 3, _CHANGE_GRID, _CHANGE_GRID)
        transition, appearance = _sync_frame_descriptors(coarse)
        per_frame = torch.cat([transition, appearance, _event_descriptors(pooled)], dim=-1)  # (B, T, SYNC_RAW_DIM)
        position = (sync_token_times(t) * SYNC_FPS).clamp(0, t - 1)  # fractional frame index per token
        below = position.floor().long().clamp(max=t - 2)  # t >= 16: below + 1 is always a frame
        frac = (position - below).to(per_frame.dtype).to(self.device).view(1, -1, 1)
        below = below.to(self.device)
        tokens = per_frame[:, below] * (1 - frac) + per_frame[:, below + 1] * frac
        return tokens @ self.sync_projection

    # -- text ------------------------------------------------------------------------------

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, text_seq_len, text_dim): word i at position i, overflow words summed
        into the last position, each position unit length; the empty prompt gives zeros."""
        if isinstance(prompts, str):
            raise TypeError("text_features takes a list of prompts, not a single string")
        out = torch.zeros(len(prompts), self.text_seq_len, self.text_dim)
        for row, prompt in enumerate(prompts):
            words = _WORD.findall(prompt.lower())
            for i, word in enumerate(words):
                out[row, min(i, self.text_seq_len - 1)] += _word_vector(word, self.text_dim, self.seed)
        norms = out.norm(dim=-1, keepdim=True)
        out = torch.where(norms > 0, out / norms.clamp_min(1e-12), out)
        return out.to(self.device)


# -- frame helpers -------------------------------------------------------------------------


def _check_frames(frames: torch.Tensor, what: str) -> None:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{what} frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"{what} frames must be uint8 (B, T, H, W, 3); got {frames.dtype} {tuple(frames.shape)}")


def _pooled_frames(frames: torch.Tensor, grid: int) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, grid, grid) in [0, 1], area-averaged."""
    b, t, h, w, _ = frames.shape
    chunks = []
    for chunk in frames.reshape(b * t, h, w, 3).split(_FRAME_CHUNK):
        x = chunk.permute(0, 3, 1, 2).float().div_(255.0)
        chunks.append(F.adaptive_avg_pool2d(x, grid))
    return torch.cat(chunks).reshape(b, t, 3, grid, grid)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., H, W)."""
    r, g, b = x.unbind(-3)
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _soft_histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    """values (N, C, P) in [0, 1] -> (N, C, bins), triangular binning so a small colour change
    moves the histogram a little instead of flipping a bin; each row sums to 1."""
    pos = (values * bins - 0.5).clamp(0, bins - 1)
    centres = torch.arange(bins, device=values.device, dtype=values.dtype)
    weight = (1 - (pos.unsqueeze(-1) - centres).abs()).clamp_min(0)
    return weight.mean(dim=2)


def _orientation_histogram(gx: torch.Tensor, gy: torch.Tensor, bins: int) -> torch.Tensor:
    """Gradient orientations modulo pi, soft circular bins weighted by magnitude -> (N, bins)."""
    magnitude = torch.hypot(gx, gy).flatten(1)
    pos = (torch.atan2(gy, gx).flatten(1) % math.pi) * (bins / math.pi)
    centres = torch.arange(bins, device=gx.device, dtype=gx.dtype)
    dist = (pos.unsqueeze(-1) - centres).abs()
    dist = torch.minimum(dist, bins - dist)
    weight = (1 - dist).clamp_min(0) * magnitude.unsqueeze(-1)
    return weight.sum(dim=1) / magnitude.sum(dim=1, keepdim=True).clamp_min(1e-8)


def _clip_descriptor(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, g, g) in [0, 1] -> (N, CLIP_RAW_DIM). Each group is centred and scaled to a
    comparable range so no group dominates the direction after normalisation."""
    n = x.shape[0]
    hist = _soft_histogram(x.flatten(2), _HIST_BINS).flatten(1)
    layout = F.adaptive_avg_pool2d(x, 4).flatten(1)
    gray = _luma(x)
    gx = (gray[:, :, 1:] - gray[:, :, :-1])[:, :-1, :]
    gy = (gray[:, 1:, :] - gray[:, :-1, :])[:, :, :-1]
    edge_grid = F.adaptive_avg_pool2d(torch.hypot(gx, gy).unsqueeze(1), 4).reshape(n, 16)
    orientation = _orientation_histogram(gx, gy, _ORIENT_BINS)
    brightness = torch.stack([gray.mean(dim=(1, 2)), gray.std(dim=(1, 2))], dim=1)
    return torch.cat(
        [
            (hist - 1 / _HIST_BINS) * 4,
            (layout - 0.5) * 2,
            edge_grid.sqrt() * 2,
            (orientation - 1 / _ORIENT_BINS) * 4,
            (brightness - torch.tensor([0.5, 0.0], device=x.device)) * torch.tensor([2.0, 4.0], device=x.device),
        ],
        dim=1,
    )


def _foreground(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 3, g, g) in [0, 1] -> per-pixel foreground weight (B, T, g, g): summed |RGB - the
    window's per-pixel median| above the noise floor; and presence (B, T) in [0, 1]."""
    background = x.median(dim=1, keepdim=True).values
    fg = ((x - background).abs().sum(dim=2) - _FG_FLOOR).clamp_min(0)
    mass = fg.mean(dim=(2, 3))
    return fg, (mass / (mass + 2e-3)).clamp(0, 1)


def _weighted_colour(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, g, g) frames, (B, T, g, g) pixel weights -> (B, T, 3) weighted mean colour."""
    return (x * weight.unsqueeze(2)).sum(dim=(3, 4)) / weight.sum(dim=(2, 3)).unsqueeze(-1).clamp_min(1e-6)


def _foreground_look(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, g, g) -> (B, T, _FOREGROUND_DIM): the foreground's mean colour (zero where
    there is none) and its amount, scaled up so they count next to ~100 whole-frame terms."""
    fg, present = _foreground(x)
    colour = _weighted_colour(x, fg)
    return torch.cat([(colour - 0.5) * 6 * present.unsqueeze(-1), fg.mean(dim=(2, 3)).sqrt().unsqueeze(-1) * 8], -1)


def _signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * x.abs().sqrt()


def _shifted(v: torch.Tensor, by: int) -> torch.Tensor:
    """v[:, k - by] for every frame k of (B, T, ...) `v`, the edge frame repeated past either end."""
    t = v.shape[1]
    return v[:, (torch.arange(t, device=v.device) - by).clamp(0, t - 1)]


def _sync_frame_descriptors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 3, g, g) -> transition (B, T, _TRANSITION_DIM): the change into each frame from
    the one before (zero for frame 0); appearance (B, T, _APPEARANCE_DIM). Square roots
    compress the range so a small motion is visible next to a full-frame flash."""
    b, t = x.shape[:2]
    diff = x - _shifted(x, 1)
    luma_diff = _luma(diff)  # (B, T, g, g)
    motion = F.adaptive_avg_pool2d(luma_diff.abs().flatten(0, 1).unsqueeze(1), 4).reshape(b, t, 16)
    transition = torch.cat(
        [
            motion.sqrt() * 2,
            _signed_sqrt(luma_diff.mean(dim=(2, 3))).unsqueeze(-1) * 2,
            _signed_sqrt(diff.mean(dim=(3, 4))) * 2,
            motion.amax(dim=-1, keepdim=True).sqrt() * 2,
        ],
        dim=-1,
    )
    layout = F.adaptive_avg_pool2d(x.flatten(0, 1), 2).reshape(b, t, 12)
    appearance = torch.cat([(layout - 0.5) * 2, (_luma(x).mean(dim=(2, 3)).unsqueeze(-1) - 0.5) * 2], dim=-1)
    return transition, appearance


def _event_descriptors(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, g, g) in [0, 1] -> (B, T, _EVENT_DIM): what the foreground does in each frame.

    Foreground: summed |RGB - the window's per-pixel median| above a noise floor (a static
    camera's background is the median of a window in which things move or flash). Per frame:
    its amount and the new foreground since the last frame (an object lighting up or coming
    into view), its centroid (x, y), the centroid's velocity (into the frame) and acceleration
    (centred on the frame: a bounce or a hit reverses the velocity), |acceleration|, the
    colour of what changed (foreground weighted by its change from the last frame), the
    foreground's colour, the impact (the larger of the scaled |acceleration| and onset, squared
    so peaks stand out of steady motion) and its decaying trace (a peak hold that falls by
    `_IMPACT_DECAY` a frame for `_IMPACT_HOLD` frames), and impact and trace times the
    foreground's colour. Motion terms count only while the foreground is there in every frame
    they use."""
    b, t, _, g, _ = x.shape
    fg, present = _foreground(x)  # (B, T, g, g), (B, T)
    mass = fg.mean(dim=(2, 3))
    coords = (torch.arange(g, device=x.device, dtype=x.dtype) + 0.5) / g - 0.5
    weight = fg / fg.sum(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    cx = (weight.sum(dim=2) * coords).sum(dim=-1)
    cy = (weight.sum(dim=3) * coords).sum(dim=-1)
    centre = torch.stack([cx, cy], dim=-1)  # (B, T, 2), frame units, 0 = middle

    both = torch.minimum(present, _shifted(present, 1))
    velocity = (centre - _shifted(centre, 1)) * both.unsqueeze(-1)
    inner = torch.ones(t, device=x.device, dtype=x.dtype)
    inner[[0, -1]] = 0  # a window edge repeats its frame: no acceleration there, no made-up impact
    all3 = torch.minimum(both, _shifted(present, -1)) * inner
    acceleration = (_shifted(centre, -1) - 2 * centre + _shifted(centre, 1)) * all3.unsqueeze(-1)
    change = (x - _shifted(x, 1)).abs().sum(dim=2)  # (B, T, g, g)
    w = fg * change
    colour = _weighted_colour(x, w)
    colour_weight = (w.mean(dim=(2, 3)) / (w.mean(dim=(2, 3)) + 1e-3)).unsqueeze(-1)
    onset = (mass - _shifted(mass, 1)).clamp_min(0)
    hit = acceleration.norm(dim=-1).sqrt() * 6
    appear = onset.sqrt() * 8
    look = (_weighted_colour(x, fg) - 0.5) * 2 * present.unsqueeze(-1)
    impact = (torch.maximum(hit, appear) / _IMPACT_SCALE).square()  # (B, T)
    trace = _decaying_peak_hold(impact, _IMPACT_DECAY, _IMPACT_HOLD)
    return torch.cat(
        [
            mass.sqrt().unsqueeze(-1) * 4,
            appear.unsqueeze(-1),
            centre * present.unsqueeze(-1) * 2,
            _signed_sqrt(velocity) * 4,
            _signed_sqrt(acceleration) * 4,
            hit.unsqueeze(-1),
            (colour - 0.5) * 2 * colour_weight,
            look,
            impact.unsqueeze(-1),
            trace.unsqueeze(-1),
            look * impact.unsqueeze(-1) * 2,
            look * trace.unsqueeze(-1) * 2,
        ],
        dim=-1,
    )


def _decaying_peak_hold(v: torch.Tensor, decay: float, hold: int) -> torch.Tensor:
    """(B, T) -> (B, T): out[k] = max over j < hold of v[k - j] * decay**j. Causal (a sound follows
    its cause) and finite, so an event moves only the tokens of its next `hold` frames."""
    return torch.stack(
        [_shifted(v, j) * decay**j * (torch.arange(v.shape[1], device=v.device) >= j) for j in range(hold)]
    ).amax(0)


@functools.lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int, seed: int) -> torch.Tensor:
    digest = hashlib.blake2b(f"{seed}\x00{word}".encode(), digest_size=8).digest()
    gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(torch.float32)
