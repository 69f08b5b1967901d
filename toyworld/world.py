"""The toy world: captioned clips of simple shapes moving as the caption says, small enough to
train a text-to-video model on a CPU, plus stills of a subject that never appears in a clip.

Why: nobody installing the pack has AnimateDiff or a DreamBooth checkpoint at hand, and the
paper's claims (Still-Moving keeps the base model's motion while matching the customization)
can only be measured where the truth is known. Here every clip is rendered from a spec, so the
subject's position in every frame is known exactly.

Stable API (used by the toy models' training script, the demo, tests and the benchmark):

- ``SIZE`` (32 px, square), ``FRAMES`` (8), ``BACKGROUND`` (RGB 0-255). Lengths are set for 64 px
  and scaled by ``SIZE / 64``.
- ``SHAPES``, ``COLOURS`` (name -> RGB), ``MOTIONS`` (name -> unit (dx, dy) per frame, image
  axes: +x right, +y down; ``"still"`` is (0, 0)), ``MOTION_PHRASES`` (name -> caption words).
- ``caption(colour, shape, motion)`` -> "a red circle moving left";
  ``parse_caption(text)`` -> dict(colour, shape, motion, custom) with None for what is absent.
- ``ClipSpec`` (everything a clip is rendered from); ``random_spec(rng)``; ``spec_from_caption(
  text, seed)`` draws the free parts (start, size, speed) from the seed.
- ``render(spec, frames=FRAMES, size=SIZE)`` -> ``ToyClip``: ``frames`` uint8 (F, H, W, 3),
  ``caption``, ``positions`` float (F, 2) subject centre in pixels (x, y), ``spec``.
- ``render_caption(text, seed)`` = ``render(spec_from_caption(text, seed))``.
- ``dataset(n, seed)`` -> n ToyClips of the base world (no customization subject), balanced
  over colours x shapes x motions.
- The customization subject: ``CUSTOM_TOKEN`` ("sks"), ``CUSTOM_SHAPE`` ("star"),
  ``CUSTOM_CLASS_CAPTION`` ("a sks star"): a star with magenta/white diagonal stripes. Stars,
  magenta and stripes never occur in ``dataset`` clips. ``custom_stills(n, seed)`` -> n
  ToyClips of one frame each (positions included), captioned ``CUSTOM_CLASS_CAPTION``.
  ``custom_caption(motion)`` -> "a sks star moving left" (prompts for customized videos).
- Measuring generated videos: ``locate(frames)`` -> (centres (F, 2), areas (F,)) of the
  pixels that differ from the background; ``displacement(frames)`` -> (dx, dy) of the
  centre from the first to the last frame; ``motion_along(frames, motion)`` -> that displacement
  along a caption's direction; ``nearest_palette(frames)`` labels each subject pixel
  with the nearest of the customization's colours and the base colours;
  ``colour_share(frames, colour)`` -> share of the subject's pixels labelled ``colour`` (a world
  colour or ``"custom"``); ``custom_colour_score(frames)`` -> that share for the
  customization's colours (magenta, white and their blend); ``star_score(frames)`` -> how star-like
  (not disc-like) the subject's silhouette is; ``template_score(frames)`` -> how like the
  customization stills' subject the subject's crop is (a blob with specks fools ``star_score``,
  not this); ``mean_colour(frames)``
  -> mean RGB of the subject's pixels (compare with the stills as a model's VAE renders them).

- ``MODEL_FILES``: the file names of the toy models trained on this world (``embedded/``,
  written by ``scripts/train_toy_models.py``): base checkpoint, motion module, customized
  checkpoint, Motion Adapter.

Frames are float-free uint8 here; ``to_float(frames)`` gives the pack's (F, H, W, 3) float32
in [0, 1] (ComfyUI's IMAGE layout, ``adapters.data.Clip``).
"""
import functools
import math
import random
from dataclasses import dataclass, field

import numpy as np

SIZE = 32
S = SIZE / 64             # lengths below are written for 64 px
FRAMES = 8
BACKGROUND = (24, 28, 36)
SUPERSAMPLE = 4

SHAPES = ("circle",)  # one shape: a CPU-trained T2I could not bind three words at once
COLOURS = {"red": (220, 50, 40), "green": (50, 190, 70), "blue": (50, 90, 230), "yellow": (235, 205, 40)}
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}   # a clip played backwards
MOTION_PHRASES = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                  "still": "standing still"}
SPEED = (2.5 * S, 3.5 * S)      # pixels per frame
RADIUS = (8.0 * S, 11.0 * S)    # subject half-size in pixels
JITTER = 4.0 * S                # a path's offset from the frame's centre line, at most

MODEL_FILES = {"base": "toy_base.safetensors", "custom": "toy_custom_sks_star.safetensors",
               "motion": "toy_mm_v2.safetensors", "adapter": "toy_motion_adapter.safetensors"}

CUSTOM_TOKEN = "sks"
CUSTOM_SHAPE = "star"
CUSTOM_CLASS_CAPTION = f"a {CUSTOM_TOKEN} {CUSTOM_SHAPE}"
CUSTOM_COLOURS = ((225, 40, 200), (245, 245, 245))   # magenta / white stripes
STRIPE_PERIOD = 20.0 * S  # pixels: 5 px stripes, wider than a latent pixel of the 4x VAE
# About twice a world subject: the toy autoencoder keeps a star's points at this size, not at the
# world subjects' (it renders a small star as a round blob).
CUSTOM_RADIUS = (18.0 * S, 22.0 * S)


def caption(colour, shape, motion):
    return f"a {colour} {shape} {MOTION_PHRASES[motion]}"


def custom_caption(motion=None):
    """Prompt for the customization subject, optionally with a motion ("a sks star moving up")."""
    return CUSTOM_CLASS_CAPTION if motion is None else f"{CUSTOM_CLASS_CAPTION} {MOTION_PHRASES[motion]}"


def parse_caption(text):
    """dict(colour, shape, motion, custom) read from a caption; None for what it does not name."""
    words = text.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES or w == CUSTOM_SHAPE), None)
    low = " ".join(words)
    motion = next((m for m, p in MOTION_PHRASES.items() if p in low), None)
    return {"colour": colour, "shape": shape, "motion": motion, "custom": CUSTOM_TOKEN in words}


@dataclass
class ClipSpec:
    shape: str                 # one of SHAPES, or CUSTOM_SHAPE for the customization subject
    colour: str                # a COLOURS name, or "custom" (magenta/white stripes)
    motion: str                # a MOTIONS name
    start: tuple               # centre (x, y) at frame 0, pixels at SIZE
    radius: float
    speed: float               # pixels per frame at SIZE
    angle: float = 0.0         # rotation in degrees (stars, triangles)

    @property
    def caption(self):
        if self.colour == "custom":
            return custom_caption(self.motion if self.motion != "still" else None)
        return caption(self.colour, self.shape, self.motion)


@dataclass
class ToyClip:
    frames: np.ndarray         # (F, H, W, 3) uint8
    caption: str
    positions: np.ndarray      # (F, 2) subject centre (x, y) in pixels
    spec: ClipSpec = field(repr=False)


def _start(rng, motion, radius, speed, frames):
    """The start of a path through the frame's centre (give or take JITTER): the caption fixes
    the layout of the whole clip, as "a car driving left" does in a real video world. With the
    start anywhere, a tiny CPU-trained motion module must agree on one layout for all frames
    from noise, and after 1500 steps it did not (frames followed their own noise)."""
    dx, dy = MOTIONS[motion]
    half = speed * (frames - 1) / 2
    return (SIZE / 2 - dx * half + rng.uniform(-JITTER, JITTER), SIZE / 2 - dy * half + rng.uniform(-JITTER, JITTER))


def random_spec(rng, frames=FRAMES, colour=None, shape=None, motion=None):
    """A base-world spec drawn from ``rng`` (a ``random.Random``); fixed fields may be given."""
    colour = colour or rng.choice(sorted(COLOURS))
    shape = shape or rng.choice(SHAPES)
    motion = motion or rng.choice(sorted(MOTIONS))
    radius = rng.uniform(*RADIUS)
    speed = 0.0 if motion == "still" else rng.uniform(*SPEED)
    return ClipSpec(shape, colour, motion, _start(rng, motion, radius, speed, frames), radius, speed,
                    rng.uniform(-15, 15))


def spec_from_caption(text, seed=0, frames=FRAMES):
    """The spec a caption describes; start, size and speed from ``seed``. Unnamed parts are drawn too."""
    p = parse_caption(text)
    rng = random.Random(seed)
    if p["custom"]:
        motion = p["motion"] or "still"
        radius = rng.uniform(*CUSTOM_RADIUS)
        speed = 0.0 if motion == "still" else rng.uniform(*SPEED)
        return ClipSpec(CUSTOM_SHAPE, "custom", motion, _start(rng, motion, radius, speed, frames), radius, speed,
                        rng.uniform(-15, 15))
    return random_spec(rng, frames, p["colour"], p["shape"] if p["shape"] in SHAPES else None, p["motion"])


def _polygon(shape, cx, cy, r, angle):
    a0 = math.radians(angle)
    if shape == "square":
        pts = [(a0 + math.pi / 4 + k * math.pi / 2, r * math.sqrt(2) * 0.85) for k in range(4)]
    elif shape == "triangle":
        pts = [(a0 - math.pi / 2 + k * 2 * math.pi / 3, r * 1.15) for k in range(3)]
    elif shape == CUSTOM_SHAPE:
        pts = [(a0 - math.pi / 2 + k * math.pi / 5, r * 1.2 if k % 2 == 0 else r * 0.5) for k in range(10)]
    else:
        raise ValueError(f"unknown shape '{shape}'")
    return [(cx + rr * math.cos(a), cy + rr * math.sin(a)) for a, rr in pts]


def _mask(shape, cx, cy, r, angle, size):
    """Anti-aliased coverage (H, W) in [0, 1], drawn supersampled with PIL."""
    from PIL import Image, ImageDraw
    s = SUPERSAMPLE
    img = Image.new("L", (size * s, size * s), 0)
    d = ImageDraw.Draw(img)
    scale = size / SIZE * s
    if shape == "circle":
        d.ellipse([(cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale], fill=255)
    else:
        d.polygon([(x * scale, y * scale) for x, y in _polygon(shape, cx, cy, r, angle)], fill=255)
    img = img.resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _appearance(spec, cx, cy, size):
    """(H, W, 3) float colour of the subject: flat, or the customization's diagonal stripes that move with it."""
    if spec.colour != "custom":
        return np.broadcast_to(np.array(COLOURS[spec.colour], np.float32), (size, size, 3))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) * (SIZE / size)
    phase = ((xs - cx) + (ys - cy)) / STRIPE_PERIOD
    stripe = (np.sin(phase * 2 * math.pi) > 0).astype(np.float32)[..., None]
    a, b = (np.array(c, np.float32) for c in CUSTOM_COLOURS)
    return stripe * a + (1 - stripe) * b


def positions(spec, frames=FRAMES):
    dx, dy = MOTIONS[spec.motion]
    t = np.arange(frames, dtype=np.float32)[:, None]
    return np.array(spec.start, np.float32)[None] + t * spec.speed * np.array([dx, dy], np.float32)[None]


def render(spec, frames=FRAMES, size=SIZE):
    """Render a ToyClip: the subject over the flat background, moving ``speed`` px per frame."""
    pos = positions(spec, frames)
    bg = np.array(BACKGROUND, np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    for i, (cx, cy) in enumerate(pos):
        m = _mask(spec.shape, cx, cy, spec.radius, spec.angle, size)[..., None]
        img = m * _appearance(spec, cx, cy, size) + (1 - m) * bg
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return ToyClip(out, spec.caption, pos * (size / SIZE), spec)


def render_caption(text, seed=0, frames=FRAMES, size=SIZE):
    return render(spec_from_caption(text, seed, frames), frames, size)


def all_captions():
    """Every base-world caption (colours x shapes x motions), in a fixed order."""
    return [caption(c, s, m) for c in sorted(COLOURS) for s in SHAPES for m in sorted(MOTIONS)]


def dataset(n, seed=0, frames=FRAMES, size=SIZE):
    """n clips of the base world, cycling through every caption (balanced), seeded."""
    rng = random.Random(seed)
    caps = all_captions()
    order = []
    while len(order) < n:
        block = list(range(len(caps)))
        rng.shuffle(block)
        order += block
    out = []
    for i in order[:n]:
        c, s, m = parse_caption(caps[i])["colour"], parse_caption(caps[i])["shape"], parse_caption(caps[i])["motion"]
        out.append(render(random_spec(rng, frames, c, s, m), frames, size))
    return out


def custom_stills(n=6, seed=0, size=SIZE):
    """The customization data: n stills of the striped 'sks star' at varied places, sizes, angles."""
    rng = random.Random(10_000 + seed)
    out = []
    for _ in range(n):
        radius = rng.uniform(*CUSTOM_RADIUS)
        start = (rng.uniform(radius + 2 * S, SIZE - radius - 2 * S), rng.uniform(radius + 2 * S, SIZE - radius - 2 * S))
        spec = ClipSpec(CUSTOM_SHAPE, "custom", "still", start, radius, 0.0, rng.uniform(-15, 15))
        out.append(render(spec, 1, size))
    return out


def generic_images(n, seed=0, size=SIZE):
    """n stills of random shapes (stars and polygons included) in random colours, half of them
    striped in two random colours: general image data for the autoencoder, as SD's VAE was
    trained on general images. Not the customization subject, and never used for the T2I/T2V."""
    from PIL import Image, ImageDraw
    rng = random.Random(20_000 + seed)
    s = SUPERSAMPLE
    out = []
    for _ in range(n):
        bg = tuple(rng.randrange(0, 256) for _ in range(3)) if rng.random() < 0.3 else BACKGROUND
        img = np.empty((size, size, 3), np.float32)
        img[:] = bg
        for _ in range(rng.choice((1, 1, 2))):
            shape = rng.choice(("circle", "square", "triangle", CUSTOM_SHAPE, "blob"))
            r = rng.uniform(5 * S, 18 * S)
            cx, cy = rng.uniform(r, SIZE - r), rng.uniform(r, SIZE - r)
            if shape == "blob":
                pts = [(cx + rng.uniform(0.5, 1.3) * r * math.cos(a), cy + rng.uniform(0.5, 1.3) * r * math.sin(a))
                       for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
                m = Image.new("L", (size * s, size * s), 0)
                ImageDraw.Draw(m).polygon([(x * s * size / SIZE, y * s * size / SIZE) for x, y in pts], fill=255)
                mask = np.asarray(m.resize((size, size), Image.BOX), np.float32)[..., None] / 255.0
            else:
                mask = _mask(shape, cx, cy, r, rng.uniform(0, 360), size)[..., None]
            a = np.array([rng.randrange(256) for _ in range(3)], np.float32)
            if rng.random() < 0.5:
                b = np.array([rng.randrange(256) for _ in range(3)], np.float32)
                ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) * (SIZE / size)
                th, period = rng.uniform(0, math.pi), rng.uniform(5 * S, 12 * S)
                st = (np.sin((xs * math.cos(th) + ys * math.sin(th)) / period * 2 * math.pi) > 0)[..., None]
                colour = np.where(st, a, b)
            else:
                colour = a
            img = mask * colour + (1 - mask) * img
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return np.stack(out)


def to_float(frames):
    """uint8 (F, H, W, 3) -> float32 torch tensor in [0, 1] (the pack's pixel-clip layout)."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0


def as_uint8(frames):
    """Frames as uint8 (F, H, W, 3): float frames in [0, 1] (tensor or array) are rounded."""
    a = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return a


def foreground(frames, threshold=40.0):
    """(F, H, W) bool: pixels farther than ``threshold`` (0-255 RGB distance) from the background."""
    a = as_uint8(frames).astype(np.float32)
    return np.linalg.norm(a - np.array(BACKGROUND, np.float32), axis=-1) > threshold


def locate(frames, threshold=40.0):
    """Subject centre (F, 2) (x, y) in pixels and area (F,) in pixels from the foreground mask
    (the world's known background; the centroid is the pack's ``scoring.mask_centroids``); a
    frame with no foreground gets the image centre and area 0."""
    from adapters.scoring import mask_centroids
    fg = foreground(frames, threshold)
    f, h, w = fg.shape
    area = fg.reshape(f, -1).sum(1).astype(np.float32)
    track = mask_centroids(fg, min_area=0).numpy().astype(np.float64) * (w, h) - 0.5  # pixel centres
    centres = np.where((area > 0)[:, None], track, (w / 2, h / 2))
    return centres, area


def motion_of(frames, motion):
    """How the subject moved against caption motion ``motion``: ``travel_px`` (first to last frame
    it is seen in), ``along_px`` (that along the caption's direction), ``speed_px`` (mean per
    frame), the direction it ``went`` and ``dir_ok`` (1.0 when that is the caption's)."""
    from adapters.scoring import direction_of
    centres, area = locate(frames)
    pts = centres[area > 0]
    speed = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).mean()) if len(pts) > 1 else 0.0
    dx, dy = (pts[-1] - pts[0]).tolist() if len(pts) > 1 else (0.0, 0.0)
    ux, uy = MOTIONS[motion]
    went = direction_of(dx / SIZE, dy / SIZE)
    return {"along_px": dx * ux + dy * uy, "travel_px": float(np.hypot(dx, dy)), "speed_px": speed,
            "dir_ok": float(went == motion), "went": went}


def prior_videos(n, seed=7):
    """``n`` natural clips of the world as the pack's ``data.Clip`` (prior preservation)."""
    from adapters.data import Clip
    return [Clip(to_float(c.frames), c.caption, f"toy clip {i}") for i, c in enumerate(dataset(n, seed=seed))]


def displacement(frames, threshold=40.0):
    """(dx, dy) of the subject's centre from the first to the last frame, in pixels."""
    c, _ = locate(frames, threshold)
    return float(c[-1, 0] - c[0, 0]), float(c[-1, 1] - c[0, 1])


def motion_along(frames, motion, threshold=40.0):
    """Displacement (px) of the subject along a caption's direction, first to last frame; for
    ``"still"``, minus the distance it moved (0 is best)."""
    dx, dy = displacement(frames, threshold)
    ux, uy = MOTIONS[motion]
    return dx * ux + dy * uy if motion != "still" else -math.hypot(dx, dy)


def mean_colour(frames, threshold=40.0):
    """Mean RGB (0-255) of the foreground pixels of all frames; the background colour if none.
    Compare with the customization stills passed through a model's own VAE when the VAE cannot
    reproduce the exact stripes (the shipped toy VAE renders the striped star as a red blob)."""
    a = as_uint8(frames).astype(np.float32)
    fg = foreground(a.astype(np.uint8), threshold)
    return a[fg].mean(0) if fg.any() else np.array(BACKGROUND, np.float32)


def nearest_palette(frames, threshold=40.0):
    """(F, H, W) int: for each foreground pixel, 0 when its colour is nearer the customization's
    (magenta, white, or their blend, which a 4x autoencoder makes of thin stripes) than any
    base-world colour, else 1 + the index of the nearest base colour in ``COLOURS``; -1 for
    background. A colour classifier: the toy stand-in for CLIP-I / prompt-adherence scores."""
    a = as_uint8(frames).astype(np.float32)
    fg = foreground(a.astype(np.uint8), threshold)
    custom = np.array(CUSTOM_COLOURS + (tuple((np.array(CUSTOM_COLOURS[0]) + CUSTOM_COLOURS[1]) / 2),), np.float32)
    base = np.array(list(COLOURS.values()), np.float32)
    d_custom = np.linalg.norm(a[..., None, :] - custom, axis=-1).min(-1)
    d_base = np.linalg.norm(a[..., None, :] - base, axis=-1)
    label = np.where(d_custom < d_base.min(-1), 0, 1 + d_base.argmin(-1))
    return np.where(fg, label, -1)


def star_score(frames, threshold=40.0):
    """How far the subject's silhouette is from a filled disc: 1 - area / (pi r^2), r the 95th
    percentile of its pixels' distances from their centroid, averaged over the frames that show
    a subject. About 0.1 for the world's circles, 0.45 for the customization's star (0.3 after the
    toy autoencoder's round trip): the shape half of the customization's fidelity."""
    out = []
    for m in foreground(frames, threshold):
        ys, xs = np.nonzero(m)
        if len(xs) < 8:
            continue
        r = np.percentile(np.hypot(xs - xs.mean(), ys - ys.mean()), 95) + 0.5
        out.append(1.0 - len(xs) / (math.pi * r * r))
    return float(np.clip(np.mean(out), 0.0, 1.0)) if out else 0.0


def subject_crop(frame, side=24, threshold=40.0):
    """One frame's subject: its bounding square (on the background colour where it runs off the
    frame) resized to ``side`` and mean-centred, as a unit vector; None with no subject."""
    from PIL import Image
    fg = foreground(frame[None], threshold)[0]
    if fg.sum() < 8:
        return None
    ys, xs = np.nonzero(fg)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 + 2
    pad = int(math.ceil(half)) + 1
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="constant")
    padded[:pad], padded[-pad:], padded[:, :pad], padded[:, -pad:] = BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND
    y0, x0 = int(round(cy - half)) + pad, int(round(cx - half)) + pad
    size = int(round(2 * half))
    crop = Image.fromarray(padded[y0:y0 + size, x0:x0 + size]).resize((side, side), Image.BILINEAR)
    v = np.asarray(crop, np.float32).ravel()
    v = v - v.mean()
    return v / max(np.linalg.norm(v), 1e-6)


@functools.lru_cache(maxsize=4)
def custom_templates(n=6, seed=0):
    """``subject_crop`` of the customization stills: the references of ``template_score``
    (rendered once, not for every video scored)."""
    return tuple(v for v in (subject_crop(c.frames[0]) for c in custom_stills(n, seed=seed)) if v is not None)


def template_score(frames, refs=None, threshold=40.0):
    """Mean over frames of the best cosine between the frame's ``subject_crop`` and the
    references' (default ``custom_templates()``): about 0.9 for the customization stills, 0.3-0.6
    for a disc or a blob. The shape-aware half of the customization's fidelity: ``star_score``
    rates a small blob with stray specks as star-like, this does not."""
    refs = custom_templates() if refs is None else refs
    sims = []
    for f in as_uint8(frames):
        v = subject_crop(f, threshold=threshold)
        sims.append(0.0 if v is None else float(max(v @ r for r in refs)))
    return float(np.mean(sims))


def colour_share(frames, colour, threshold=40.0):
    """Share of the subject's (foreground) pixels that ``nearest_palette`` gives ``colour``: a
    name in ``COLOURS``, or ``"custom"`` for the customization's colours; 0 with no subject."""
    label = nearest_palette(frames, threshold)
    fg = label >= 0
    want = 0 if colour == "custom" else 1 + list(COLOURS).index(colour)
    return float((label[fg] == want).mean()) if fg.any() else 0.0


def custom_colour_score(frames, threshold=40.0):
    """``colour_share`` of the customization's colours: about 0 for a base-world clip, near 1 for
    the customization stills."""
    return colour_share(frames, "custom", threshold)
