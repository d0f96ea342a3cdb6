"""The GIF writer's palette: every frame's colours are in it, the last frame's included."""

import numpy as np

from cogvx.video import to_uint8_frames, write_video


def _read_gif(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _drifting_hues(t: int = 9, h: int = 48, w: int = 64) -> np.ndarray:
    """A colourful clip whose hues drift frame to frame (a light change): each frame has its own."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((t, h, w, 3), np.float32)
    saturation = 0.5 + 0.4 * y / h
    for i in range(t):
        hue = (0.25 * x / w + 0.06 * i) % 1.0
        for channel, n in enumerate((5, 3, 1)):  # HSV -> RGB, value 0.9
            k = (n + 6 * hue) % 6
            frames[i, ..., channel] = 0.9 - 0.9 * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)
    return to_uint8_frames(frames)


def test_flat_grey_frames_come_back_exactly(tmp_path):
    """Six colours fit any palette; with stats_mode=diff the last (220) came back as 200."""
    levels = [120, 140, 160, 180, 200, 220]
    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in levels])
    decoded = _read_gif(write_video(frames, tmp_path / "grey.gif", fps=8, fmt="gif"))
    assert decoded.shape == frames.shape
    assert [sorted(np.unique(f).tolist()) for f in decoded] == [[v] for v in levels]


def test_last_frame_of_a_colourful_clip_is_as_close_as_the_others(tmp_path):
    frames = _drifting_hues()
    decoded = _read_gif(write_video(frames, tmp_path / "hues.gif", fps=8, fmt="gif"))
    error = np.abs(decoded.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    # measured: 2.9-3.9 per frame, the last 3.3; without the last frame's colours it was 6.8
    assert error.max() < 5, error.round(2)
    assert error[-1] <= 1.25 * error[:-1].max(), error.round(2)
