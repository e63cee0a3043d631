"""Offline anomaly-detection core: data, backbones, PatchCore, EfficientAD, metrics, model store.

Nothing in this package imports streamlit or plotly, and nothing downloads weights or data.
"""

import os as _os
import warnings as _warnings

# anomalib and timm consult the Hugging Face hub for pretrained weights; we never want that.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Import-time deprecation notices inside timm and anomalib are not actionable for users of this tool.
_warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)(\..*)?$")

__all__: list[str] = []
