"""Datasets: Fashion-MNIST (Debian package), photo crops (scikit-image), a user's image folder."""

from .fashion_mnist import CLASS_NAMES, caption, load_fashion_mnist
from .image_folder import ImageFolder
from .photos import PHOTO_NAMES, load_photo, photo_crops

__all__ = [
    "CLASS_NAMES", "caption", "load_fashion_mnist",
    "ImageFolder",
    "PHOTO_NAMES", "load_photo", "photo_crops",
]
