"""MTL loss-weighting and gradient-combination strategies, one module per method."""
