"""The ONE-PEACE model: plain nn.Module code (no training, data or DeepSpeed imports)."""

from ..geometry import audio_frame_count
from .adapters import AudioAdapter, TextAdapter, VisionAdapter
from .decoder import DenoisingDecoder
from .encoder import FusionEncoder, FusionLayer, GeGLU
from .onepeace import OnePeace
from .outputs import ModalityOutput
from .position import RelativePositionBias

__all__ = [
    "AudioAdapter", "TextAdapter", "VisionAdapter", "audio_frame_count", "DenoisingDecoder", "FusionEncoder",
    "FusionLayer", "GeGLU", "OnePeace", "ModalityOutput", "RelativePositionBias",
]
