"""Face landmarks: the 468-point FaceMesh and its topology."""
