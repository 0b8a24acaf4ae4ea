"""unimed."""
