"""The annotation page in a real browser (Debian's Chromium driven by Playwright): click,
name, move and delete keypoints, save, reload; and reading a frame from an episode."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from kil.annotate.server import AnnotationSession, frame_from_episode, serve
from kil.data.bag import EpisodeWriter
from kil.data.episode import EpisodeMetadata
from kil.errors import ConfigError
from kil.graph import load_graph
from kil.perception.spec import load_spec

from helpers import sample_rgbd

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def served(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    session = AnnotationSession(image, "episode_0000_frame0003.png", tmp_path / "spec", "pick_place")
    server = serve(session, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield session, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (scripts/setup.sh installs it with the dev extra)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser.new_page()
        browser.close()


def click_pixel(page, u, v):
    """Click image pixel (u, v) (the canvas shows the image 1:1 inside a 1 px border)."""
    box = page.locator("canvas").bounding_box()
    page.mouse.click(box["x"] + 1 + u, box["y"] + 1 + v)


def open_with_a_category(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.click("#add-category")


def add_point(page, u, v, name):
    click_pixel(page, u, v)
    page.locator(".category.active .kp-name").last.fill(name)


def test_click_name_move_delete_save_and_reload(served, page):
    session, url = served
    open_with_a_category(page, url)
    page.locator(".category-name").fill("block")
    page.locator(".category-prompt").fill("a small block")
    add_point(page, 50, 40, "top")
    add_point(page, 120, 80, "corner")
    add_point(page, 200, 150, "stray")
    page.locator(".category.active .kp-delete").nth(2).click()  # delete "stray"
    box = page.locator("canvas").bounding_box()  # drag "corner" from (120, 80) to (130, 90)
    page.mouse.move(box["x"] + 1 + 121, box["y"] + 1 + 81)  # grabbed within the hit radius
    page.mouse.down()
    page.mouse.move(box["x"] + 1 + 125, box["y"] + 1 + 85)
    page.mouse.move(box["x"] + 1 + 130, box["y"] + 1 + 90)
    page.mouse.up()
    page.click("#add-category")
    page.locator(".category-name").nth(1).fill("tray")
    add_point(page, 250, 200, "center")
    click_pixel(page, 250, 200)  # select it, then delete it with the keyboard, then put it back
    page.keyboard.press("Delete")
    assert page.locator(".category.active .kp-name").count() == 0
    add_point(page, 251, 201, "center")
    page.click("#save")
    page.wait_for_selector("#status.ok")

    spec_file = session.out_dir / "keypoints.yaml"
    saved = yaml.safe_load(spec_file.read_text())
    assert saved == {"task": "pick_place", "categories": [
        {"name": "block", "prompt": "a small block", "references": [
            {"image": "episode_0000_frame0003.png", "keypoints": {"top": [50.0, 40.0], "corner": [130.0, 90.0]}}]},
        {"name": "tray", "prompt": "", "references": [
            {"image": "episode_0000_frame0003.png", "keypoints": {"center": [251.0, 201.0]}}]},
    ]}
    spec = load_spec(spec_file)
    np.testing.assert_array_equal(spec.image(spec.spec.categories[0].references[0]), session.image)

    first = spec_file.read_bytes()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator(".category-name").nth(0).input_value() == "block"
    assert [e.input_value() for e in page.locator(".category.active .kp-name").all()] == ["top", "corner"]
    page.click("#save")  # saving the reloaded page changes nothing
    page.wait_for_selector("#status.ok")
    assert spec_file.read_bytes() == first
    assert load_spec(spec_file).spec == spec.spec


def test_a_bad_save_shows_the_error_and_keeps_the_spec(served, page):
    session, url = served
    open_with_a_category(page, url)
    add_point(page, 10, 10, "a")
    page.click("#save")
    page.wait_for_selector("#status.ok")
    before = (session.out_dir / "keypoints.yaml").read_bytes()
    add_point(page, 20, 20, "a")  # a second point of the same name
    page.click("#save")
    page.wait_for_selector("#status.error")
    assert "keypoint names must be unique" in page.locator("#status").text_content()
    assert (session.out_dir / "keypoints.yaml").read_bytes() == before


def test_second_instance_points_are_named_like_the_first(served, page):
    session, url = served
    open_with_a_category(page, url)
    add_point(page, 10, 10, "top")
    add_point(page, 30, 30, "side")
    page.click(".add-instance")
    click_pixel(page, 100, 100)
    click_pixel(page, 120, 120)
    page.click("#save")
    page.wait_for_selector("#status.ok")
    layout = load_spec(session.out_dir).layout()
    assert layout.names == ("object0[0]/top", "object0[0]/side", "object0[1]/top", "object0[1]/side")


def test_views_are_clicked_on_another_frame_and_kept_when_the_reference_is_edited(tmp_path, page):
    """--view-of: the page shows the category's instances with the reference's point names;
    clicks on this frame become a view of the reference (its points where the object lies
    here), saved without touching the reference; editing the reference later keeps the
    view on the points it still names."""
    from PIL import Image

    from kil.perception.spec import Category, KeypointSpec, Reference, View, save_spec

    rng = np.random.default_rng(2)
    reference, turned = ((rng.random((240, 320, 3)) * 255).astype(np.uint8) for _ in range(2))
    Image.fromarray(reference).save(tmp_path / "ref.png")
    save_spec(KeypointSpec("t", [Category("block", "a block", [Reference("ref.png", {"top": (10.0, 10.0), "side": (30.0, 30.0)})])]), tmp_path)
    session = AnnotationSession(turned, "turned.png", tmp_path, "t", view_of="block")
    server = serve(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_selector("body[data-ready=true]")
        assert "views of block" in page.locator("#status").text_content()
        click_pixel(page, 100, 60)
        click_pixel(page, 140, 90)
        page.click("#save")
        page.wait_for_selector("#status.ok")
    finally:
        server.shutdown()
        server.server_close()
    ref = load_spec(tmp_path).spec.categories[0].references[0]
    assert ref.keypoints == {"top": (10.0, 10.0), "side": (30.0, 30.0)}
    assert ref.views == [View("turned.png", {"top": (100.0, 60.0), "side": (140.0, 90.0)})]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "turned.png")), turned)

    editing = AnnotationSession(reference, "ref.png", tmp_path, "t")
    state = editing.state()
    state["categories"][0]["references"][0]["keypoints"].pop()  # delete "side" from the reference
    editing.save(state)
    assert load_spec(tmp_path).spec.categories[0].references[0].views == [View("turned.png", {"top": (100.0, 60.0)})]


def test_view_annotation_errors_are_one_line(tmp_path):
    from PIL import Image

    from kil.perception.spec import Category, KeypointSpec, Reference, save_spec

    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ConfigError, match="--view-of: .*keypoints.yaml does not exist yet"):
        AnnotationSession(image, "v.png", tmp_path, "t", view_of="block")
    Image.fromarray(image).save(tmp_path / "ref.png")
    save_spec(KeypointSpec("t", [Category("block", "", [Reference("ref.png", {"top": (1.0, 1.0)})])]), tmp_path)
    with pytest.raises(ConfigError, match=r"--view-of: no category 'tray' in .*keypoints.yaml \(it has block\)"):
        AnnotationSession(image, "v.png", tmp_path, "t", view_of="tray")
    session = AnnotationSession(image + 1, "v.png", tmp_path, "t", view_of="block")
    before = (tmp_path / "keypoints.yaml").read_bytes()
    state = session.state()
    state["categories"][0]["references"][0]["keypoints"] = [{"name": "bottom", "u": 2.0, "v": 2.0}]
    with pytest.raises(ConfigError, match=r"views\[0\]\.keypoints: names points the reference does not have: \['bottom'\]"):
        session.save(state)
    state["categories"][0]["references"].append({"keypoints": []})
    with pytest.raises(ConfigError, match="2 instances, but 'block' has 1"):
        session.save(state)
    assert (tmp_path / "keypoints.yaml").read_bytes() == before and not (tmp_path / "v.png").exists()


def test_frame_from_episode(tmp_path):
    graph = load_graph(Path(__file__).parent / "data" / "all_types_graph.yaml")
    rng = np.random.default_rng(0)
    frames = [sample_rgbd(rng, 24, 32) for _ in range(3)]
    path = tmp_path / "episode_0000"
    with EpisodeWriter(path, EpisodeMetadata(task="pick_place", rig="sim")) as writer:
        for k, frame in enumerate(frames):
            writer.write(graph.topics["/camera"], frame.__class__(**{**vars(frame), "stamp_ns": frame.stamp_ns + k}), frame.stamp_ns + k)
        writer.close(success=True)
    image, topic = frame_from_episode(path, 2)
    assert topic == "/zed/zed_node/rgb/color/rect/image"
    np.testing.assert_array_equal(image, frames[2].rgb)
    with pytest.raises(ConfigError, match="--frame 5 but the episode has 3 colour frames"):
        frame_from_episode(path, 5)


def test_saving_keeps_instance_order_and_other_images(tmp_path):
    """References on other images stay where they are, this image's are replaced in place,
    so instance indices (and keypoint names) do not move; a renamed category keeps them."""
    from PIL import Image

    from kil.perception.spec import Category, KeypointSpec, Reference, save_spec

    rng = np.random.default_rng(1)
    here = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    other = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(here).save(tmp_path / "here.png")
    Image.fromarray(other).save(tmp_path / "other.png")
    save_spec(KeypointSpec("t", [Category("block", "", [Reference("here.png", {"a": (1.0, 1.0)}), Reference("other.png", {"a": (2.0, 2.0)})])]), tmp_path)
    session = AnnotationSession(here, "here.png", tmp_path, "t")
    page = session.state()
    assert page["categories"][0]["points"] == ["a"] and page["categories"][0]["other_references"] == 1
    page["categories"][0]["references"][0]["keypoints"][0]["u"] = 5.0
    page["categories"][0]["name"] = "cube"
    session.save(page)
    spec = load_spec(tmp_path).spec
    assert spec.categories[0].name == "cube"
    assert [(r.image, r.keypoints["a"]) for r in spec.categories[0].references] == [("here.png", (5.0, 1.0)), ("other.png", (2.0, 2.0))]
    clash = AnnotationSession(other, "here.png", tmp_path, "t")  # another frame under a taken name
    with pytest.raises(ConfigError, match="here.png exists and shows another frame"):
        clash.save(clash.state())
