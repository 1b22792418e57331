"""sensor_msgs/Image and CameraInfo <-> colour, depth, feature arrays and `RGBD`.

Colour: rgb8, bgr8, bgra8 (ZED 2i), rgba8, mono8. Depth: 32FC1 metres (NaN/±inf invalid)
or 16UC1 millimetres (0 invalid). Features: 32FC<C>, one channel per feature dimension at
patch resolution. Rows may be padded (step > width * pixel size) and big-endian data is
byte-swapped, as both are legal in sensor_msgs/Image.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from kil.converters.factory import MessageFactory, as_bytes, header_msg, time_ns
from kil.errors import MessageError
from kil.msgs import RGBD, FeatureMap

# encoding -> (channels in the message, index of R, G, B in a pixel; None for mono)
COLOUR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "bgra8": (4, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "mono8": (1, None),
}
DEPTH_ENCODINGS = ("32FC1", "16UC1")
_FEATURE_ENCODING = re.compile(r"^32FC(\d+)$")
_IMAGE = "sensor_msgs/msg/Image"


def _image_msg(factory: MessageFactory, pixels: np.ndarray, stamp_ns: int, frame_id: str, encoding: str) -> Any:
    """Image message from (H, W, C) or (H, W) little-endian pixels."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return factory.new(
        _IMAGE,
        header=header_msg(factory, stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * int(np.prod(pixels.shape[2:], dtype=int)) * pixels.itemsize,
        data=pixels.reshape(-1).view(np.uint8),
    )


def _pixels(msg: Any, dtype: Any, channels: int) -> np.ndarray:
    """(H, W, channels) array of `dtype` from an Image, honouring step padding and endianness."""
    dtype = np.dtype(dtype)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise MessageError(f"Image.step: {step} is less than width * pixel size = {row_bytes} ({msg.encoding})")
    data = as_bytes(msg.data)
    if data.size < step * height:
        raise MessageError(f"Image.data: {data.size} bytes, expected step * height = {step * height}")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    return np.ascontiguousarray(rows).view(wire).reshape(height, width, channels).astype(dtype, copy=False)


def rgb_to_image(factory: MessageFactory, rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Any:
    """Image from (H, W, 3) uint8 RGB in a colour encoding."""
    if encoding not in COLOUR_ENCODINGS:
        raise MessageError(f"Image.encoding: cannot write colour as {encoding!r} (supported: {', '.join(COLOUR_ENCODINGS)})")
    channels, order = COLOUR_ENCODINGS[encoding]
    if order is None:  # ITU-R BT.601 luma
        pixels = np.round(rgb @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    else:
        pixels = np.empty((*rgb.shape[:2], channels), np.uint8)
        pixels[..., list(order)] = rgb
        if channels == 4:
            pixels[..., 3] = 255
    return _image_msg(factory, pixels, stamp_ns, frame_id, encoding)


def image_to_rgb(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an Image in any colour encoding (mono8 is replicated)."""
    encoding = str(msg.encoding)
    if encoding not in COLOUR_ENCODINGS:
        raise MessageError(
            f"Image.encoding: unsupported colour encoding {encoding!r} (supported: {', '.join(COLOUR_ENCODINGS)})"
        )
    channels, order = COLOUR_ENCODINGS[encoding]
    pixels = _pixels(msg, np.uint8, channels)
    if order is None:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., list(order)])


def depth_to_image(factory: MessageFactory, depth: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "32FC1") -> Any:
    """Image from (H, W) float32 metres; 16UC1 stores millimetres with 0 for no reading."""
    if encoding == "32FC1":
        return _image_msg(factory, depth.astype(np.float32, copy=False), stamp_ns, frame_id, encoding)
    if encoding == "16UC1":
        mm = np.round(np.asarray(depth, np.float64) * 1000.0)
        valid = np.isfinite(mm) & (mm > 0) & (mm <= np.iinfo(np.uint16).max)
        return _image_msg(factory, np.where(valid, mm, 0).astype(np.uint16), stamp_ns, frame_id, encoding)
    raise MessageError(f"Image.encoding: cannot write depth as {encoding!r} (supported: {', '.join(DEPTH_ENCODINGS)})")


def image_to_depth(msg: Any) -> np.ndarray:
    """(H, W) float32 metres from a 32FC1 (metres) or 16UC1 (millimetres, 0 -> NaN) Image."""
    encoding = str(msg.encoding)
    if encoding == "32FC1":
        return _pixels(msg, np.float32, 1)[..., 0]
    if encoding == "16UC1":
        mm = _pixels(msg, np.uint16, 1)[..., 0]
        return np.where(mm > 0, mm.astype(np.float32) / 1000.0, np.float32(np.nan)).astype(np.float32)
    raise MessageError(f"Image.encoding: unsupported depth encoding {encoding!r} (supported: {', '.join(DEPTH_ENCODINGS)})")


def features_to_image(factory: MessageFactory, features: FeatureMap) -> Any:
    """Image with encoding 32FC<C> at patch resolution from a (C, h, w) FeatureMap."""
    channels = features.features.shape[0]
    pixels = np.moveaxis(features.features, 0, -1)
    return _image_msg(factory, pixels, features.stamp_ns, features.frame_id, f"32FC{channels}")


def image_to_features(msg: Any) -> FeatureMap:
    """FeatureMap from a 32FC<C> Image."""
    match = _FEATURE_ENCODING.match(str(msg.encoding))
    if not match or int(match.group(1)) < 1:
        raise MessageError(f"Image.encoding: expected 32FC<C> for a feature map, got {msg.encoding!r}")
    pixels = _pixels(msg, np.float32, int(match.group(1)))
    return FeatureMap(
        stamp_ns=time_ns(msg.header.stamp),
        frame_id=str(msg.header.frame_id),
        features=np.moveaxis(pixels, -1, 0),
    )


def camera_info_to_ros(
    factory: MessageFactory,
    stamp_ns: int,
    frame_id: str,
    K: np.ndarray,
    size: tuple[int, int],
    distortion: np.ndarray,
    distortion_model: str,
) -> Any:
    """CameraInfo for an image of `size` (H, W) with (3, 3) intrinsics K; P = [K | 0], R = I."""
    P = np.zeros((3, 4))
    P[:, :3] = K
    return factory.new(
        "sensor_msgs/msg/CameraInfo",
        header=header_msg(factory, stamp_ns, frame_id),
        height=size[0],
        width=size[1],
        distortion_model=distortion_model,
        d=np.asarray(distortion, np.float64),
        k=np.asarray(K, np.float64).reshape(-1),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
    )


def camera_info_from_ros(msg: Any) -> tuple[np.ndarray, tuple[int, int], np.ndarray, str]:
    """(K (3, 3), size (H, W), distortion (k,), distortion_model) from a CameraInfo."""
    K = np.asarray(msg.k, np.float64).reshape(3, 3)
    if not np.any(K):
        raise MessageError("CameraInfo.k: all zeros, the camera is not calibrated")
    return K, (int(msg.height), int(msg.width)), np.asarray(msg.d, np.float64).copy(), str(msg.distortion_model)


def rgbd_to_ros(
    factory: MessageFactory, rgbd: RGBD, rgb_encoding: str = "rgb8", depth_encoding: str = "32FC1"
) -> tuple[Any, Any, Any]:
    """(colour Image, depth Image, CameraInfo), all stamped and framed like the RGBD."""
    stamp, frame = rgbd.stamp_ns, rgbd.frame_id
    return (
        rgb_to_image(factory, rgbd.rgb, stamp, frame, rgb_encoding),
        depth_to_image(factory, rgbd.depth, stamp, frame, depth_encoding),
        camera_info_to_ros(factory, stamp, frame, rgbd.K, rgbd.size, rgbd.distortion, rgbd.distortion_model),
    )


def rgbd_from_ros(image: Any, depth: Any, info: Any, base_frame_id: str, T_base_camera: np.ndarray) -> RGBD:
    """RGBD from registered colour and depth Images, their CameraInfo and the camera pose.

    The depth image must be registered to the colour image: same size and optical frame.
    """
    rgb = image_to_rgb(image)
    metres = image_to_depth(depth)
    K, size, distortion, model = camera_info_from_ros(info)
    if metres.shape != rgb.shape[:2]:
        raise MessageError(
            f"depth Image: {metres.shape[1]}x{metres.shape[0]} does not match colour "
            f"{rgb.shape[1]}x{rgb.shape[0]} (depth must be registered to colour)"
        )
    if size != rgb.shape[:2]:
        raise MessageError(f"CameraInfo: size {size[1]}x{size[0]} does not match colour {rgb.shape[1]}x{rgb.shape[0]}")
    if depth.header.frame_id != image.header.frame_id:
        raise MessageError(
            f"depth Image.header.frame_id: {depth.header.frame_id!r} differs from colour "
            f"{image.header.frame_id!r} (depth must be registered to colour)"
        )
    return RGBD(
        stamp_ns=time_ns(image.header.stamp),
        frame_id=str(image.header.frame_id),
        rgb=rgb,
        depth=metres,
        K=K,
        base_frame_id=base_frame_id,
        T_base_camera=T_base_camera,
        distortion=distortion,
        distortion_model=model,
    )
