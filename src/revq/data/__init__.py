"""Images in, latents out: image sources (:mod:`.images`) and the latent cache (:mod:`.latent_cache`)."""

from revq.data.images import ImageSource, open_image_source
from revq.data.latent_cache import EpochSampler, LatentBatches, LatentCache, encode_to_cache

__all__ = ["ImageSource", "open_image_source", "LatentCache", "encode_to_cache", "EpochSampler", "LatentBatches"]
