"""Stage 1: raw medical images to de-identified MDS shards."""
