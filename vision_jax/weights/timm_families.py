"""Every timm family mapping, in one explicit tuple (searched in order by `timm.timm_family`).

A new family module `timm_<family>.py` defines `FAMILIES = (TimmFamily(...),)`
and is added here; nothing registers itself on import, so the family modules
import only `weights.core` and `timm.py` imports this list (no import circle).
"""

from vision_jax.weights import timm_convnext
from vision_jax.weights import timm_efficientnet
from vision_jax.weights import timm_efficientnetv2
from vision_jax.weights import timm_maxxvit
from vision_jax.weights import timm_resnet
from vision_jax.weights import timm_resnet_v2
from vision_jax.weights import timm_vgg
from vision_jax.weights import timm_vit

FAMILIES = (*timm_convnext.FAMILIES, *timm_efficientnet.FAMILIES, *timm_efficientnetv2.FAMILIES,
            *timm_maxxvit.FAMILIES, *timm_resnet.FAMILIES, *timm_resnet_v2.FAMILIES,
            *timm_vgg.FAMILIES, *timm_vit.FAMILIES)
