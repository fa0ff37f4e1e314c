"""Imports: system images from container registries (skopeo, umoci, mke2fs) and from URLs."""
