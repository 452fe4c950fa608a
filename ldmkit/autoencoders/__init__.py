"""First-stage models of LDM: autoencoders (AE, KL-VAE, VQ-VAE), the pixel-space identity, patch
discriminator, losses."""

from ldmkit.autoencoders.autoencoder import Autoencoder, AutoencoderOutput, EncoderOutput
from ldmkit.autoencoders.config import AE_PRESETS, KINDS, AutoencoderConfig
from ldmkit.autoencoders.discriminator import PatchDiscriminator
from ldmkit.autoencoders.encoder_decoder import Decoder, Encoder
from ldmkit.autoencoders.kl import DiagonalGaussian
from ldmkit.autoencoders.losses import (
    GAN_LOSSES,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    reconstruction_loss,
)
from ldmkit.autoencoders.perceptual import (
    LPIPS,
    PERCEPTUAL_LOSSES,
    DiscriminatorFeatureLoss,
    NoPerceptualLoss,
    VGG16Features,
    perceptual_loss,
)
from ldmkit.autoencoders.pixel import PixelSpace, make_first_stage, pixel_space
from ldmkit.autoencoders.vq import VectorQuantizer, VQOutput, code_stats

__all__ = [
    "AE_PRESETS", "KINDS", "Autoencoder", "AutoencoderConfig", "AutoencoderOutput", "Decoder",
    "DiagonalGaussian", "DiscriminatorFeatureLoss", "Encoder", "EncoderOutput", "GAN_LOSSES",
    "LPIPS", "NoPerceptualLoss", "PERCEPTUAL_LOSSES", "PatchDiscriminator", "PixelSpace", "VGG16Features",
    "VQOutput", "VectorQuantizer", "adaptive_gan_weight", "code_stats",
    "hinge_d_loss", "hinge_g_loss", "make_first_stage", "nonsaturating_d_loss", "nonsaturating_g_loss",
    "perceptual_loss", "pixel_space", "reconstruction_loss",
]
