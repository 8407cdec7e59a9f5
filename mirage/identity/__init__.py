"""Identity embedders (ArcFace)."""
