"""nn.Modules only: backbones, DRS classifier, refiner, DeepLab segmenters."""
