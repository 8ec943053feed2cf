"""Decoded DICOM pixels -> the 8-bit grey picture a viewer would show (MONOCHROME2 look).

pydicom's own processing functions do the work (colour spaces, palette, Modality LUT or rescale,
VOI LUT or window); this module picks which apply and maps their output range onto 0..255.
"""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

# The robust window used when a >8-bit image carries no window of its own.
LOW_PERCENT = 0.5
HIGH_PERCENT = 99.5
# Percentiles are estimated on a strided sample of at most about this many pixels: exact
# enough for a window and much cheaper on 3000 x 3000 detector images.
PERCENTILE_SAMPLE_PIXELS = 1_000_000


def percentile_window(values, low_percent: float = LOW_PERCENT, high_percent: float = HIGH_PERCENT) -> np.ndarray:
    """[H, W] numbers -> [H, W] uint8, the `low_percent`..`high_percent` range mapped to 0..255.

    Falls back to the full min..max range when the percentiles coincide (few distinct values);
    a constant image becomes all zeros.
    """
    values = np.asarray(values)
    step = max(1, int(np.sqrt(values.size / PERCENTILE_SAMPLE_PIXELS)))
    sample = values[::step, ::step] if values.ndim == 2 else values.ravel()[:: step * step]
    low, high = np.percentile(sample, [low_percent, high_percent])
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    return _scale_to_uint8(values, low, high)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map low -> 0 and high -> 255, clipped and rounded."""
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _value(dataset: pydicom.Dataset, keyword: str):
    """The element's value, or None when it is missing or empty (some files carry empty ones)."""
    value = dataset.get(keyword)
    return None if value is None or value == "" else value


def _has_modality_transform(dataset: pydicom.Dataset) -> bool:
    """True if a Modality LUT or a non-identity rescale changes the stored values."""
    if dataset.get("ModalityLUTSequence"):
        return True
    slope = _value(dataset, "RescaleSlope")
    intercept = _value(dataset, "RescaleIntercept")
    if slope is None or intercept is None:
        return False
    return float(slope) != 1.0 or float(intercept) != 0.0


def _voi_lut_item(dataset: pydicom.Dataset):
    """The VOI LUT pydicom's apply_voi_lut would use (it prefers it to a window), else None."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _has_window(dataset: pydicom.Dataset) -> bool:
    return _value(dataset, "WindowCenter") is not None and _value(dataset, "WindowWidth") is not None


def _apply_voi_to_uint8(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Apply the file's VOI LUT or window with pydicom, then map its output range to 0..255.

    pydicom's output range depends on BitsStored, signedness, rescale and the LUT, so rather
    than re-deriving it we push two probe values from far below and far above the window
    through the same function; their outputs are the ends of the range. They are sorted, so
    an inverting LUT still inverts; and they are the LUT's own first and last entries, which
    also covers LUTs that use fewer bits than their descriptor declares.
    """
    lut_item = _voi_lut_item(dataset)
    if lut_item is not None:
        # A LUT is indexed by integers; rescaled values are floats.
        values = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        entries_code, first_mapped, bits_per_entry = (int(value) for value in lut_item.LUTDescriptor)
        entries = entries_code or 2**16
        if bits_per_entry == 8:
            # pydicom 3.0 indexes an 8-bit LUT through a uint8 array, so inputs 256 or more
            # past the first mapped value wrap around; a 16-bit index gives the right lookup.
            lut_item.LUTDescriptor = [entries_code, first_mapped, 16]
        probe = np.array([first_mapped - 1, first_mapped + entries - 1], dtype=np.int64)
    else:
        probe = np.array([-1e12, 1e12], dtype=np.float64)
    with np.errstate(over="ignore"):  # the SIGMOID function overflows exp() for the probe
        mapped = apply_voi_lut(values, dataset, index=0)
        low, high = np.sort(apply_voi_lut(probe, dataset, index=0).astype(np.float64))
    if low == high:
        return np.zeros(values.shape, np.uint8)
    return _scale_to_uint8(mapped, low, high)


def _colour_to_grey(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB -> [H, W] grey: the luma (Y) of pydicom's RGB -> YBR_FULL conversion."""
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(convert_color_space(pixels, "RGB", "YBR_FULL")[..., 0])
    # pydicom converts only 8-bit colour; same BT.601 weights, then window the >8-bit result.
    return percentile_window(cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2GRAY))


def to_grey_uint8(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """First-frame pixels as decoded by pydicom -> [H, W] uint8 that looks like MONOCHROME2."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:
        return _colour_to_grey(pixels)

    needs_modality = _has_modality_transform(dataset)
    needs_voi = _voi_lut_item(dataset) is not None or _has_window(dataset)
    if pixels.dtype == np.uint8 and not needs_modality and not needs_voi:
        bits_stored = int(dataset.get("BitsStored") or 8)
        if bits_stored >= 8:
            grey = pixels  # the RSNA fast path: stored values are already display values
        else:  # 1-7 bit data (masks, old scanners) would look black: stretch its full range
            grey = _scale_to_uint8(pixels, 0, 2**bits_stored - 1)
    else:
        values = apply_modality_lut(pixels, dataset) if needs_modality else pixels
        if needs_voi:
            grey = _apply_voi_to_uint8(values, dataset)
        elif values.dtype == np.uint8:
            grey = values
        else:
            grey = percentile_window(values)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values white; invert after windowing, as the display would.
        grey = 255 - grey
    return np.ascontiguousarray(grey, dtype=np.uint8)
