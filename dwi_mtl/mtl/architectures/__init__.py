"""MTL architectures (LibMTL names), each in its own module, working with any encoder."""
