"""The annotation server: one frame of an episode, the task's keypoint spec, and a page to
edit it (stdlib HTTP on localhost; the page is static HTML + JS in ./static).

The page edits the references that lie on this frame's image; references of the spec on
other images are kept as they are, and so are the views of an edited reference (on the
points it still names). With `view_of` (a category) the page edits instead the views of
that category's instances on this image: the same points, clicked where the object lies
here (turned, elsewhere), each a further descriptor of its keypoint. Saving validates the
whole spec first (one-line error back to the page), writes the frame as PNG beside the
spec, and replaces keypoints.yaml atomically, so a bad save never damages a good spec.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kil.config import load_dataclass, to_plain
from kil.errors import ConfigError
from kil.perception.spec import SPEC_FILE, Category, KeypointSpec, Reference, load_spec, plain_spec, save_spec

STATIC = Path(__file__).parent / "static"


@dataclass
class AnnotationSession:
    """What the page edits: `image` (H, W, 3) uint8 saved as `image_name` in `out_dir`;
    `view_of`: a category of the spec whose views on this image are edited instead of
    references."""

    image: np.ndarray
    image_name: str
    out_dir: Path
    task: str
    view_of: str | None = None

    def __post_init__(self) -> None:
        if self.view_of is not None:
            self._viewed(self.existing())  # checked before the page is served

    def _viewed(self, spec: KeypointSpec | None) -> Category:
        """The category `view_of` names (ConfigError when the spec has none such)."""
        if spec is None:
            raise ConfigError(f"--view-of: {self.out_dir / SPEC_FILE} does not exist yet; annotate the reference image first")
        for category in spec.categories:
            if category.name == self.view_of:
                return category
        raise ConfigError(f"--view-of: no category {self.view_of!r} in {self.out_dir / SPEC_FILE} "
                          f"(it has {', '.join(c.name for c in spec.categories)})")

    def png(self) -> bytes:
        buffer = BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()

    def existing(self) -> KeypointSpec | None:
        return load_spec(self.out_dir / SPEC_FILE).spec if (self.out_dir / SPEC_FILE).is_file() else None

    def state(self) -> dict[str, Any]:
        """The page's view: categories with the references on this image (editable) and how
        many references lie on other images (kept)."""
        spec = self.existing()
        if self.view_of is not None:
            return self._view_state(spec)
        categories = []
        for category in spec.categories if spec else []:
            here = [r for r in category.references if r.image == self.image_name]
            categories.append({
                "name": category.name,
                "original": category.name,  # how the spec calls it, so a renamed category keeps its other references
                "prompt": category.prompt,
                "points": list(category.references[0].keypoints),  # the names every instance must have
                "references": [{"keypoints": [{"name": n, "u": u, "v": v} for n, (u, v) in r.keypoints.items()]} for r in here],
                "other_references": len(category.references) - len(here),
            })
        height, width = self.image.shape[:2]
        return {"task": spec.task if spec else self.task, "image": {"name": self.image_name, "width": width, "height": height},
                "categories": categories}

    def save(self, page: dict[str, Any]) -> Path:
        """Merge the page's categories into the spec and save it (ConfigError when invalid).

        The page's references replace this image's references of the category in place (so
        instance indices, and with them keypoint names, keep their order); extra ones are
        appended; references on other images stay where they are."""
        existing = self.existing()
        if self.view_of is not None:
            return self._save_views(page, existing)
        old = {c.name: c for c in (existing.categories if existing else [])}
        categories = []
        for i, item in enumerate(page.get("categories", [])):
            where = f"categories[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: expected a category object")
            edited = []
            for j, ref in enumerate(item.get("references", [])):
                names = [kp.get("name") for kp in ref.get("keypoints", [])]
                if len(set(names)) != len(names):
                    raise ConfigError(f"{where}.references[{j}]: keypoint names must be unique, got {names}")
                edited.append({"image": self.image_name, "keypoints": {kp["name"]: [kp["u"], kp["v"]] for kp in ref.get("keypoints", [])}})
            previous = old.get(item.get("original") or item.get("name"))
            references = []
            for ref in previous.references if previous else []:
                if ref.image != self.image_name:
                    references.append(to_plain(ref))
                elif edited:
                    references.append(_keep_views(edited.pop(0), ref))
            categories.append({"name": item.get("name", ""), "prompt": item.get("prompt", ""), "references": references + edited})
        spec = load_dataclass(KeypointSpec, {"task": page.get("task") or self.task, "categories": categories}, "spec:")
        self._write_image()
        return save_spec(spec, self.out_dir)

    def _view_state(self, spec: KeypointSpec | None) -> dict[str, Any]:
        """The page's view in view mode: the one category, instance r holding the view of
        reference r on this image (no points where it has none yet)."""
        category = self._viewed(spec)
        references = []
        for ref in category.references:
            here = [v for v in ref.views if v.image == self.image_name]
            points = here[0].keypoints if here else {}
            references.append({"keypoints": [{"name": n, "u": u, "v": v} for n, (u, v) in points.items()]})
        height, width = self.image.shape[:2]
        return {"task": spec.task, "image": {"name": self.image_name, "width": width, "height": height}, "view_of": category.name,
                "categories": [{"name": category.name, "original": category.name, "prompt": category.prompt,
                                "points": list(category.references[0].keypoints), "references": references, "other_references": 0}]}

    def _save_views(self, page: dict[str, Any], existing: KeypointSpec | None) -> Path:
        """Replace the views on this image of the `view_of` category's references by the page's
        (an instance left without points has none here); everything else stays."""
        category = self._viewed(existing)
        items = page.get("categories", [])
        if len(items) != 1 or not isinstance(items[0], dict) or items[0].get("name") != category.name:
            raise ConfigError(f"categories: this page edits the views of {category.name!r} only (keep that one category, unrenamed)")
        edited = items[0].get("references", [])
        if len(edited) > len(category.references):
            raise ConfigError(f"categories[0].references: {len(edited)} instances, but {category.name!r} has "
                              f"{len(category.references)} (a view shows an instance the reference images have)")
        data = plain_spec(existing)
        where = next(i for i, c in enumerate(existing.categories) if c.name == category.name)
        for r, ref in enumerate(data["categories"][where]["references"]):
            keypoints = edited[r].get("keypoints", []) if r < len(edited) else []
            names = [kp.get("name") for kp in keypoints]
            if len(set(names)) != len(names):
                raise ConfigError(f"categories[0].references[{r}]: keypoint names must be unique, got {names}")
            views = [v for v in ref.get("views", []) if v["image"] != self.image_name]
            if keypoints:
                views.append({"image": self.image_name, "keypoints": {kp["name"]: [kp["u"], kp["v"]] for kp in keypoints}})
            ref["views"] = views
        spec = load_dataclass(KeypointSpec, data, "spec:")
        self._write_image()
        return save_spec(spec, self.out_dir)

    def _write_image(self) -> None:
        """Write the frame beside the spec, refusing to point the spec at another image that
        already has this file name."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / self.image_name
        if path.exists():
            with Image.open(path) as img:
                same = np.array_equal(np.asarray(img.convert("RGB")), self.image)
            if not same:
                raise ConfigError(f"{path} exists and shows another frame; choose another --out or remove it")
            return
        Image.fromarray(self.image).save(path)


def _keep_views(edited: dict[str, Any], previous: Reference) -> dict[str, Any]:
    """The page's edit of a reference with the views the reference had, on the points it
    still names (a deleted or renamed point leaves the views; a view left without points goes)."""
    names = list(edited["keypoints"])
    views = [{"image": v.image, "keypoints": {p: list(v.keypoints[p]) for p in names if p in v.keypoints}} for v in previous.views]
    return {**edited, "views": [v for v in views if v["keypoints"]]}


def _handler(session: AnnotationSession) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the CLI prints the URL
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path in ("/", "/index.html"):
                self._send(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
            elif self.path == "/annotate.js":
                self._send(200, (STATIC / "annotate.js").read_bytes(), "text/javascript; charset=utf-8")
            elif self.path == "/image.png":
                self._send(200, session.png(), "image/png")
            elif self.path == "/api/spec":
                try:
                    self._json(200, session.state())
                except ConfigError as err:
                    self._json(500, {"ok": False, "error": str(err)})
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/api/spec":
                self._send(404, b"not found", "text/plain")
                return
            try:
                page = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with lock:
                    path = session.save(page)
                self._json(200, {"ok": True, "path": str(path)})
            except (ConfigError, ValueError, KeyError, TypeError, AttributeError) as err:
                message = str(err) if isinstance(err, ConfigError) else f"malformed request: {err}"
                self._json(400, {"ok": False, "error": message})
            except OSError as err:
                self._json(500, {"ok": False, "error": f"cannot write the spec into {session.out_dir}: {err.strerror or err}"})

    return Handler


def serve(session: AnnotationSession, port: int = 0) -> ThreadingHTTPServer:
    """A server for `session` on 127.0.0.1 (port 0: any free one); call serve_forever()."""
    return ThreadingHTTPServer(("127.0.0.1", port), _handler(session))


def frame_from_episode(episode: str | Path, frame: int = 0, topic: str | None = None) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB of colour frame `frame` of an episode, and the topic it came from."""
    from kil.data.preview import colour_frames

    count = 0
    for found_topic, _, rgb in colour_frames(episode, topic):
        if count == frame:
            return rgb, found_topic
        count += 1
    if topic is not None and count == 0:
        raise ConfigError(f"{episode}: --topic {topic} has no colour images in this episode")
    raise ConfigError(f"{episode}: --frame {frame} but the episode has {count} colour frames")


def reference_name(episode: str | Path, frame: int) -> str:
    return f"{Path(episode).name}_frame{frame:04d}.png"

