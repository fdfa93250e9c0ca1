"""Analysis-by-synthesis fitting: losses, stages, optimiser, image sets."""
