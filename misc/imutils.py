"""Image operations shared by the datasets (IRN's augmentation, written with an explicit numpy Generator so that
every random draw can be reproduced)."""
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def rescale(img, scale, nearest=False):
    """Resize by a factor with PIL (bicubic for images, nearest for label maps), as IRN's pil_rescale."""
    h, w = img.shape[:2]
    size = (int(round(h * scale)), int(round(w * scale)))
    return resize(img, size, nearest)


def resize(img, size, nearest=False):
    """Resize to (H, W)."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    resample = Image.NEAREST if nearest else Image.BICUBIC
    return np.asarray(Image.fromarray(img).resize((w, h), resample=resample))


def random_resize_long(img, min_long, max_long, rng):
    """Resize so that the long side is a random integer in [min_long, max_long] (IRN: 320..640)."""
    target_long = int(rng.integers(min_long, max_long + 1))
    scale = target_long / max(img.shape[:2])
    return rescale(img, scale)


def normalize(img):
    """uint8 (H, W, 3) RGB -> float32, ImageNet mean/std normalised."""
    return (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def random_crop(arrays, crop_size, fill_values, rng):
    """Crop the same random crop_size x crop_size window from several aligned arrays.

    An image smaller than the crop is placed at a random offset inside a canvas filled with `fill_values`
    (0 after normalisation = the mean colour; 255 = ignore for labels), as IRN's random_crop.
    """
    h, w = arrays[0].shape[:2]
    ch, cw = min(crop_size, h), min(crop_size, w)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    ctop = int(rng.integers(0, crop_size - ch + 1))
    cleft = int(rng.integers(0, crop_size - cw + 1))
    out = []
    for a, fill in zip(arrays, fill_values):
        canvas = np.full((crop_size, crop_size) + a.shape[2:], fill, dtype=a.dtype)
        canvas[ctop:ctop + ch, cleft:cleft + cw] = a[top:top + ch, left:left + cw]
        out.append(canvas)
    return out


def hwc_to_chw(img):
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def strided_size(size, stride):
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def strided_up_size(size, stride):
    """Smallest multiple of `stride` covering `size` (the stride-16 map is upsampled to this, then cropped)."""
    h, w = strided_size(size, stride)
    return h * stride, w * stride


# VOC colour palette (also used for COCO's first 81 indices); index 255 = void shown in light grey.
def color_palette(num_entries=256):
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    palette[255] = (224, 224, 192)
    return palette[:num_entries].reshape(-1).tolist() + [0] * (768 - 3 * num_entries)


def colorize_cam(img, cam, alpha=0.5):
    """Overlay a [0, 1] heat map on an RGB image (for CAM pictures)."""
    import matplotlib
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return (img.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


# --- the pipeline's two input transforms --------------------------------------------------------------------------


def classification_augment(img, crop_size, rng, resize_long=(320, 640), hflip=True):
    """IRN's classifier-training augmentation: random long side in resize_long, h-flip, ImageNet normalisation,
    random crop_size crop (padding with 0 after normalisation = the mean colour). uint8 HWC -> float32 CHW."""
    if resize_long:
        img = random_resize_long(img, resize_long[0], resize_long[1], rng)
    if hflip and rng.random() < 0.5:
        img = img[:, ::-1]
    img = normalize(img)
    if crop_size:
        img = random_crop([img], crop_size, [0.0], rng)[0]
    return hwc_to_chw(img)


def scale_pyramid(img, scales):
    """uint8 HWC image -> list over scales of float32 (2, 3, h, w) arrays: [image, h-flipped image]."""
    pyramid = []
    for s in scales:
        scaled = img if s == 1.0 else rescale(img, s)
        chw = hwc_to_chw(normalize(scaled))
        pyramid.append(np.stack([chw, chw[:, :, ::-1]]).copy())
    return pyramid
