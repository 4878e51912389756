"""onepeace: pretraining ONE-PEACE models (image, audio, text) on DeepSpeed, WebDataset and SLURM."""

__version__ = "0.1.0"
