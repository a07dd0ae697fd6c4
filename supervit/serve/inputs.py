"""Request bodies to model inputs: JSON with a base64 PNG/JPEG image or a tensor, checked, with clear 4xx errors.

Accepted bodies (one image per request; the server batches requests itself)::

    {"image": "<base64 PNG or JPEG>"}                 # a data URL prefix (data:image/png;base64,) is accepted
    {"tensor": [[[...]]]}                             # nested lists [C, S, S], already normalised
    {"tensor": {"data": "<base64 float32 little-endian>", "shape": [C, S, S]}}

An image of any size is resized so that its shorter side is S and centre-cropped to S x S (S: the model's largest
input side; the model resizes for smaller operating points itself), converted to the model's channels (RGB or
grey), scaled to [0, 1] and normalised with the server's mean and std. A tensor must be [C, S, S] already.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RequestError

MAX_IMAGE_SIDE = 8192   # larger images are refused before they are decoded (a small file can hold a huge image)


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: ``channels`` x ``side`` x ``side`` normalised with ``mean`` and ``std`` (per channel)."""

    channels: int
    side: int
    mean: tuple
    std: tuple
    max_image_side: int = MAX_IMAGE_SIDE

    def __post_init__(self):
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} must have 1 or {self.channels} values (one per channel), got {values}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")


def parse_request(body: bytes, spec: InputSpec) -> torch.Tensor:
    """The model input [C, S, S] float32 of one request body; ``RequestError`` (400/422) saying what is wrong."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body must be JSON ({err})") from None
    if not isinstance(payload, dict) or len({"image", "tensor"} & set(payload)) != 1:
        raise RequestError(400, 'the body must be a JSON object with one of "image" (base64 PNG or JPEG) or '
                                '"tensor" ([C, S, S] nested lists, or {"data": base64 float32, "shape": [C, S, S]})')
    if "image" in payload:
        return image_input(payload["image"], spec)
    return tensor_input(payload["tensor"], spec)


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(422, f"{what} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{what} is not valid base64") from None


def image_input(text, spec: InputSpec) -> torch.Tensor:
    """[C, S, S] float32 of a base64 PNG or JPEG (resized, centre-cropped, normalised)."""
    if spec.channels not in (1, 3):
        raise RequestError(422, f"this model takes {spec.channels} channels; send a tensor instead of an image")
    data = _b64(text, '"image"')
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise RequestError(422, f'"image" is not a decodable PNG or JPEG ({len(data)} bytes)') from None
    if image.format not in ("PNG", "JPEG"):
        raise RequestError(422, f'"image" must be PNG or JPEG, got {image.format}')
    width, height = image.size
    if max(width, height) > spec.max_image_side:
        raise RequestError(422, f'"image" is {width}x{height}; the largest accepted side is {spec.max_image_side}')
    try:
        image = image.convert("L" if spec.channels == 1 else "RGB")
        if image.size != (spec.side, spec.side):
            image = ImageOps.fit(image, (spec.side, spec.side), method=Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise RequestError(422, f'"image" cannot be decoded: {err}') from None
    x = torch.from_numpy(pixels.copy()).float().div_(255.0)
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)  # [C, S, S]
    return normalize(x, spec)


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(x - mean) / std per channel of [C, S, S]."""
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def tensor_input(value, spec: InputSpec) -> torch.Tensor:
    """[C, S, S] float32 of a tensor given as nested lists or as base64 float32 with its shape."""
    expected = [spec.channels, spec.side, spec.side]
    if isinstance(value, dict):
        shape = value.get("shape")
        if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                for n in shape)):
            raise RequestError(422, f'"tensor.shape" must be a list of positive ints, e.g. {expected}, got '
                                    f"{shape!r:.100}")
        data = _b64(value.get("data"), '"tensor.data"')
        if len(data) != 4 * int(np.prod(shape)):
            raise RequestError(422, f'"tensor.data" holds {len(data)} bytes; shape {shape} of float32 needs '
                                    f"{4 * int(np.prod(shape))}")
        x = torch.from_numpy(np.frombuffer(data, dtype="<f4").copy()).view(shape)
    elif isinstance(value, list):
        try:
            x = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise RequestError(422, f'"tensor" must be nested lists of numbers with shape {expected} ({err})') \
                from None
    else:
        raise RequestError(422, f'"tensor" must be nested lists or {{"data": base64 float32, "shape": {expected}}}, '
                                f"got {type(value).__name__}")
    if list(x.shape) != expected:
        raise RequestError(422, f'"tensor" must have shape {expected} (channels, side, side), got {list(x.shape)}')
    if not torch.isfinite(x).all():
        raise RequestError(422, '"tensor" holds NaN or infinite values')
    return x
