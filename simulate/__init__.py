"""advdim.simulate: Monte Carlo over random He-initialised topologies, slope fits and verdicts."""

__all__: list[str] = []
