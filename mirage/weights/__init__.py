"""Model weights: the manifest, provisioning and the embedded models' location."""
