"""Reference models for tractography: direction getters, streamline encoders."""
