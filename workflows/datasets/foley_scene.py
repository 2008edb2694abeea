"""What a foley-synth clip shows and sounds like: scene sampling, object motion, frames, audio.

Pure numpy; every clip is a function of (config, split, index). An object's look (shape +
colour) names its sound class; its motion (bounce on the floor, hit the side walls, flash)
makes a visible event at each listed time, where the class's recording starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from dub.workflows.datasets.foley_config import SPLITS, FoleySynthConfig
from dub.workflows.datasets.sound_bank import ONSET_PREROLL_SECONDS, SOUND_CLASSES, SOURCES_BY_CLASS

MOTIONS: tuple[str, ...] = ("bounce", "hit", "flash")
_MOTION_PHRASES = {"bounce": "bouncing on the floor", "hit": "sliding into the walls", "flash": "flashing"}
_FLASH_DECAY_S = 0.12
_FULL_HOP_S = 2.0  # a hop this long peaks at the top of the frame; peaks scale with hop duration
_MIN_SLIDE_SPEED = 1.5  # stage widths per second: slides into a wall are always brisk
_BACKGROUNDS = ((214, 214, 206), (200, 212, 222), (226, 218, 200), (208, 222, 208), (222, 208, 214), (196, 200, 208))


@dataclass(frozen=True)
class Look:
    shape: str  # circle | square | triangle | diamond | ring | plus
    colour: str
    rgb: tuple[int, int, int]
    noun: str


# The look is the class label a viewer sees: one shape and one colour per sound class.
CLASS_LOOKS: dict[str, Look] = {
    "snare": Look("circle", "red", (220, 40, 40), "ball"),
    "tom": Look("square", "blue", (40, 80, 220), "box"),
    "cowbell": Look("triangle", "yellow", (235, 190, 20), "cone"),
    "bell": Look("diamond", "green", (30, 160, 70), "gem"),
    "snap": Look("ring", "purple", (150, 60, 200), "ring"),
    "tabla": Look("plus", "orange", (245, 120, 20), "cross"),
}
assert set(CLASS_LOOKS) == set(SOUND_CLASSES), "every sound class needs a look"


@dataclass(frozen=True)
class SceneLayout:
    """Pixel geometry shared by all clips of one size."""

    width: int
    height: int

    @property
    def radius(self) -> int:  # every shape fits in a (2r x 2r) box around its centre
        return max(6, round(0.085 * min(self.width, self.height)))

    @property
    def floor_top(self) -> int:  # first pixel row of the floor band
        return self.height - max(4, round(0.12 * self.height))

    @property
    def wall(self) -> int:  # wall thickness, drawn inside a region's left and right edges
        return max(3, round(0.03 * self.width))

    def regions(self, n_objects: int) -> list[tuple[int, int]]:
        """Side-by-side stages, one per object: [(x0, x1)]."""
        edges = np.linspace(0, self.width, n_objects + 1).round().astype(int)
        return [(int(edges[i]), int(edges[i + 1])) for i in range(n_objects)]

    def wall_contacts(self, region: tuple[int, int]) -> tuple[float, float]:
        """Centre x of an object touching the left / right wall of `region`."""
        x0, x1 = region
        return x0 + self.wall + self.radius, x1 - self.wall - self.radius

    @property
    def rest_y(self) -> float:  # centre y of an object standing on the floor
        return float(self.floor_top - self.radius)

    @property
    def top_y(self) -> float:  # highest centre y that keeps the object on screen
        return float(self.radius + 4)


@dataclass(frozen=True)
class ObjectSpec:
    sound_class: str
    motion: str  # bounce | hit | flash
    events: tuple[float, ...]  # seconds, rounded to 1 ms
    gains: tuple[float, ...]  # linear gain of the sound at each event
    region: tuple[int, int]
    anchor: tuple[float, float]  # bounce: (x, -); hit: (start x, first wall 0=left 1=right); flash: (x, y)

    @property
    def look(self) -> Look:
        return CLASS_LOOKS[self.sound_class]

    def phrase(self) -> str:
        look = self.look
        article = "an" if look.colour[0] in "aeiou" else "a"
        return (
            f"{article} {look.colour} {look.noun} {_MOTION_PHRASES[self.motion]}: "
            f"{SOURCES_BY_CLASS[self.sound_class].description}"
        )


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    split: str
    index: int
    seconds: float
    fps: int
    width: int
    height: int
    sample_rate: int
    background: tuple[int, int, int]
    objects: tuple[ObjectSpec, ...]
    noise_seed: int
    noise_dbfs: float

    @property
    def layout(self) -> SceneLayout:
        return SceneLayout(self.width, self.height)

    @property
    def n_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def events(self) -> list[float]:
        return sorted(t for obj in self.objects for t in obj.events)

    @property
    def sound_class(self) -> str:  # the first object's class names the clip
        return self.objects[0].sound_class

    @property
    def prompt(self) -> str:
        return "; ".join(obj.phrase() for obj in self.objects)

    def as_dict(self) -> dict:
        return asdict(self)


def clip_id(seed: int, split: str, index: int) -> str:
    return f"fs{seed}-{split}-{index:05d}"  # no dots: WebDataset keys


def _split_class_order(seed: int, split: str) -> np.ndarray:
    # each split cycles through a seed-shuffled class order, so even small splits cover the classes
    rng = np.random.default_rng([seed, SPLITS.index(split), 0x5C1A55])
    return rng.permutation(len(SOUND_CLASSES))


def _sample_event_times(rng: np.random.Generator, n: int, cfg: FoleySynthConfig) -> np.ndarray:
    """n sorted times in [start margin, seconds - end margin], pairwise >= min_gap_s apart.

    Uniform over the allowed configurations: draw n points in the span left after removing the
    (n - 1) gaps, sort, then push point i right by i gaps. Rounding to 1 ms cannot close a gap
    because the gap is widened by 1 ms first.
    """
    gap = cfg.min_gap_s + 1e-3
    start, stop = cfg.start_margin_s, cfg.seconds - cfg.end_margin_s
    slack = (stop - start) - (n - 1) * gap
    points = np.sort(rng.uniform(0.0, slack, n)) + start + gap * np.arange(n)
    return np.round(points, 3)


def sample_clip(cfg: FoleySynthConfig, split: str, index: int) -> ClipSpec:
    """The clip at `index` of `split`: deterministic from (cfg.seed, split, index) and cfg."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    layout = SceneLayout(*cfg.size)
    n_objects = 2 if rng.random() < cfg.two_object_prob else 1
    first = SOUND_CLASSES[_split_class_order(cfg.seed, split)[index % len(SOUND_CLASSES)]]
    classes = [first]
    if n_objects == 2:
        classes.append(str(rng.choice([c for c in SOUND_CLASSES if c != first])))
    motions = [str(rng.choice(MOTIONS)) for _ in classes]

    gap = cfg.min_gap_s + 1e-3
    max_fit = int((cfg.seconds - cfg.start_margin_s - cfg.end_margin_s) // gap) + 1
    max_per_object = max(2, int(cfg.seconds * 0.6)) if n_objects == 1 else max(1, int(cfg.seconds * 0.35))
    counts = [int(rng.integers(2 if n_objects == 1 else 1, max_per_object + 1)) for _ in classes]
    while sum(counts) > max_fit:  # short clips: fewer events rather than an impossible spacing
        counts[int(np.argmax(counts))] -= 1
    times = _sample_event_times(rng, sum(counts), cfg)
    owner = rng.permutation(np.repeat(np.arange(n_objects), counts))

    background = np.clip(np.array(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]) + rng.integers(-8, 9, 3), 0, 255)
    objects = []
    for k, (sound_class, motion, region) in enumerate(zip(classes, motions, layout.regions(n_objects))):
        events = tuple(float(t) for t in times[owner == k])
        gains = tuple(float(g) for g in np.round(rng.uniform(*cfg.gain_range, len(events)), 4))
        left, right = layout.wall_contacts(region)
        if motion == "bounce":
            anchor = (float(rng.uniform(left, right)), 0.0)
        elif motion == "hit":
            first_wall = int(rng.integers(2))
            away = rng.uniform(0.15, 0.85) * (right - left)
            anchor = (float(left + away if first_wall == 0 else right - away), float(first_wall))
        else:
            anchor = (float(rng.uniform(left, right)), float(rng.uniform(layout.top_y + layout.radius, layout.rest_y)))
        objects.append(ObjectSpec(sound_class, motion, events, gains, region, anchor))
    return ClipSpec(
        clip_id=clip_id(cfg.seed, split, index),
        split=split,
        index=index,
        seconds=float(cfg.seconds),
        fps=int(cfg.fps),
        width=layout.width,
        height=layout.height,
        sample_rate=int(cfg.sample_rate),
        background=tuple(int(v) for v in background),
        objects=tuple(objects),
        noise_seed=int(rng.integers(2**31)),
        noise_dbfs=float(cfg.noise_dbfs),
    )


# ---------------------------------------------------------------- motion


def _bounce_height(events: np.ndarray, seconds: float, t: np.ndarray, full_height: float) -> np.ndarray:
    """Height above the floor: one parabolic hop between consecutive contacts (the events).

    A hop's peak is proportional to its duration (`full_height` at _FULL_HOP_S), so every hop
    hits the floor at the same speed and the contact is equally sharp in time; long hops leave
    the frame at the top and fall back in. The lead-in is the second half of a hop centred on
    t = 0, the tail the first half of one centred on t = seconds.
    """
    starts = np.concatenate([[-events[0]], events])
    ends = np.concatenate([events, [2 * seconds - events[-1]]])
    k = np.searchsorted(events, t, side="right")
    a, b = starts[k], ends[k]
    peak = full_height * (b - a) / _FULL_HOP_S
    return peak * 4.0 * (t - a) * (b - t) / (b - a) ** 2


def _hit_x(
    events: np.ndarray, seconds: float, t: np.ndarray, contacts: tuple[float, float], start_x: float, first_wall: int
) -> np.ndarray:
    """Centre x: straight runs from wall to wall, touching a wall exactly at each event.

    Runs never go slower than _MIN_SLIDE_SPEED (stage widths per second), so the object
    never creeps along a wall: when the time between two contacts is longer than the run, it
    rests in the middle of the stage; before the first contact it rests where it starts, after
    the last it slides back to the middle and stops.
    """
    left, right = contacts
    span, middle = right - left, (left + right) / 2.0
    min_speed = _MIN_SLIDE_SPEED * span
    walls = [contacts[(first_wall + i) % 2] for i in range(len(events))]
    key_t, key_x = [0.0], [start_x]
    lead = abs(walls[0] - start_x) / max(abs(walls[0] - start_x) / events[0], min_speed)
    if lead < events[0] - 1e-6:
        key_t.append(events[0] - lead)
        key_x.append(start_x)
    key_t.append(events[0])
    key_x.append(walls[0])
    speed = min_speed
    for i in range(1, len(events)):
        gap = events[i] - events[i - 1]
        speed = max(span / gap, min_speed)
        run = span / speed
        if run < gap - 1e-6:
            key_t += [events[i - 1] + run / 2.0, events[i] - run / 2.0]
            key_x += [middle, middle]
        key_t.append(events[i])
        key_x.append(walls[i])
    back = (span / 2.0) / speed
    if events[-1] + back < seconds - 1e-6:
        key_t += [events[-1] + back, seconds]
        key_x += [middle, middle]
    else:
        key_t.append(seconds)
        key_x.append(walls[-1] + np.sign(middle - walls[-1]) * speed * (seconds - events[-1]))
    return np.interp(t, key_t, key_x)


def _flash_glow(events: np.ndarray, t: np.ndarray) -> np.ndarray:
    """1 at each event, decaying exponentially; 0 before the first."""
    k = np.searchsorted(events, t, side="right")
    since = t - events[np.maximum(k - 1, 0)]
    return np.where(k > 0, np.exp(-since / _FLASH_DECAY_S), 0.0)


def object_track(
    obj: ObjectSpec, layout: SceneLayout, seconds: float, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y and glow (0..1) of `obj` at times `t` (seconds)."""
    t = np.asarray(t, dtype=np.float64)
    events = np.asarray(obj.events, dtype=np.float64)
    zeros = np.zeros_like(t)
    if obj.motion == "bounce":
        height = _bounce_height(events, seconds, t, layout.rest_y - layout.top_y)
        return zeros + obj.anchor[0], layout.rest_y - height, zeros
    if obj.motion == "hit":
        x = _hit_x(events, seconds, t, layout.wall_contacts(obj.region), obj.anchor[0], int(obj.anchor[1]))
        return x, zeros + layout.rest_y, zeros
    if obj.motion == "flash":
        return zeros + obj.anchor[0], zeros + obj.anchor[1], _flash_glow(events, t)
    raise ValueError(f"unknown motion {obj.motion!r}; choose from {MOTIONS}")


# ---------------------------------------------------------------- frames


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels outside (> 0) or inside (< 0) the shape; exact near edges, enough for antialiasing."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - r) / np.sqrt(2.0)
    if shape == "triangle":  # apex up, base on the bottom of the box
        return np.maximum(dy - r, (2.0 * np.abs(dx) - dy - r) / np.sqrt(5.0))
    if shape == "ring":
        return np.abs(np.hypot(dx, dy) - 0.68 * r) - 0.32 * r
    if shape == "plus":
        arm = r / 3.0
        ax, ay = np.abs(dx), np.abs(dy)
        return np.minimum(np.maximum(ax - r, ay - arm), np.maximum(ax - arm, ay - r))
    raise ValueError(f"unknown shape {shape!r}")


def _shape_coverage(dx: np.ndarray, dy: np.ndarray, *, shape: str, r: float) -> np.ndarray:
    """Share of each pixel inside the shape (a one-pixel antialiased edge)."""
    return np.clip(0.5 - _signed_distance(shape, dx, dy, r), 0.0, 1.0)


def _halo_coverage(dx: np.ndarray, dy: np.ndarray, *, r: float, strength: float) -> np.ndarray:
    """A glow fading linearly from the object's radius to 2.2 r."""
    return strength * np.clip(1.0 - (np.hypot(dx, dy) - r) / (1.2 * r), 0.0, 1.0)


def _blend_patch(
    frame: np.ndarray,
    cx: float,
    cy: float,
    reach: float,
    coverage_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rgb: np.ndarray,
) -> None:
    """Alpha-blend `rgb` into the pixels within `reach` of (cx, cy), weighted by coverage_fn(dx, dy)."""
    height, width = frame.shape[:2]
    x0, x1 = max(0, int(np.floor(cx - reach))), min(width, int(np.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(np.floor(cy - reach))), min(height, int(np.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    alpha = coverage_fn(dx, dy)[..., None]
    patch = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.round(patch + (rgb - patch) * alpha).astype(np.uint8)


def background_image(clip: ClipSpec) -> np.ndarray:
    """The still part of the scene: plain background, floor band, walls around sliding objects."""
    layout = clip.layout
    bg = np.array(clip.background, dtype=np.float32)
    frame = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    frame[:] = bg.round().astype(np.uint8)
    frame[layout.floor_top :] = (bg * 0.55).round().astype(np.uint8)
    for obj in clip.objects:
        if obj.motion == "hit":
            x0, x1 = obj.region
            frame[: layout.floor_top, x0 : x0 + layout.wall] = (bg * 0.35).round().astype(np.uint8)
            frame[: layout.floor_top, x1 - layout.wall : x1] = (bg * 0.35).round().astype(np.uint8)
    return frame


def render_frames(clip: ClipSpec) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames at t = i / fps."""
    layout = clip.layout
    r = float(layout.radius)
    base = background_image(clip)
    times = np.arange(clip.n_frames) / clip.fps
    tracks = [object_track(obj, layout, clip.seconds, times) for obj in clip.objects]
    white = np.full(3, 255.0, dtype=np.float32)
    for i in range(clip.n_frames):
        frame = base.copy()
        for obj, (xs, ys, glows) in zip(clip.objects, tracks):
            cx, cy, glow = float(xs[i]), float(ys[i]), float(glows[i])
            look = obj.look
            if glow > 0.01:  # a soft halo makes a flash visible beyond the object itself
                _blend_patch(frame, cx, cy, 2.2 * r, partial(_halo_coverage, r=r, strength=0.7 * glow), white)
            rgb = np.array(look.rgb, dtype=np.float32)
            rgb = rgb + (white - rgb) * 0.85 * glow
            _blend_patch(frame, cx, cy, r + 1.5, partial(_shape_coverage, shape=look.shape, r=r), rgb)
        yield frame


# ---------------------------------------------------------------- audio


def render_audio(clip: ClipSpec, bank: dict[str, np.ndarray]) -> np.ndarray:
    """Mono float32 soundtrack: light noise plus each object's recording at each of its events.

    A recording's attack sits ONSET_PREROLL_SECONDS into its WAV, so the WAV starts that much
    before the event.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(clip.noise_seed)
    noise = lfilter([1.0], [1.0, -0.8], rng.standard_normal(clip.n_samples))  # soft, room-tone-like
    noise *= 10 ** (clip.noise_dbfs / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    audio = noise.astype(np.float32)
    preroll = int(round(ONSET_PREROLL_SECONDS * clip.sample_rate))
    for obj in clip.objects:
        sound = bank[obj.sound_class]
        for t, gain in zip(obj.events, obj.gains):
            start = int(round(t * clip.sample_rate)) - preroll
            stop = min(clip.n_samples, start + len(sound))
            audio[start:stop] += gain * sound[: stop - start]
    peak = float(np.abs(audio).max())
    if peak > 0.98:  # two overlapping hits can add up past full scale
        audio *= 0.98 / peak
    return audio
