"""advdim.empirical: datasets, attacks, defences and training on real up-sampled images."""

__all__: list[str] = []
