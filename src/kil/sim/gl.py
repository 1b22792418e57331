"""OpenGL backend selection for MuJoCo's offscreen renderer, checked before MuJoCo loads.

MuJoCo reads MUJOCO_GL once, at import. We default to EGL (headless, Mesa's llvmpipe here)
and fall back to OSMesa, and say what to install when neither library can be loaded.
"""

from __future__ import annotations

import ctypes.util
import os

from kil.errors import ConfigError

# backend -> (shared library MuJoCo's binding loads, the Debian packages providing it)
BACKENDS: dict[str, tuple[str, str]] = {
    "egl": ("EGL", "libegl1 libgl1-mesa-dri"),
    "osmesa": ("OSMesa", "libosmesa6"),
}


def _loadable(library: str) -> bool:
    return ctypes.util.find_library(library) is not None


def select_gl_backend(preferred: str | None = None) -> str:
    """Set MUJOCO_GL (and PYOPENGL_PLATFORM) to a backend that can load, and return it.

    `preferred` (or an existing MUJOCO_GL) is honoured when its library is present;
    otherwise EGL, then OSMesa. Call before robosuite or mujoco is imported."""
    requested = preferred or os.environ.get("MUJOCO_GL") or "egl"
    requested = requested.lower()
    if requested not in BACKENDS:
        if requested in ("glfw", "glx", "cgl", "wgl"):
            return requested  # a display backend someone chose on purpose
        raise ConfigError(f"MUJOCO_GL={requested!r}: unknown GL backend (choose egl or osmesa)")
    order = [requested] + [b for b in BACKENDS if b != requested]
    for backend in order:
        if _loadable(BACKENDS[backend][0]):
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    packages = " or ".join(f"{pkgs} (MUJOCO_GL={b})" for b, (_, pkgs) in BACKENDS.items())
    raise ConfigError(f"no usable OpenGL backend for the simulator's renderer: install {packages} with apt")
