"""Image quality measures, the Frechet distance, precision and recall, and the Fashion-MNIST metric
network."""

from .fmnist_classifier import FashionClassifier, classify, load_fmnist_classifier
from .frechet import extrapolated_frechet_distance, feature_frechet_distance, frechet_distance, gaussian_statistics
from .image_quality import gradient_energy_ratio, psnr, ssim
from .precision_recall import precision_recall

__all__ = [
    "FashionClassifier", "classify", "load_fmnist_classifier",
    "extrapolated_frechet_distance", "feature_frechet_distance", "frechet_distance", "gaussian_statistics",
    "gradient_energy_ratio", "psnr", "ssim",
    "precision_recall",
]
