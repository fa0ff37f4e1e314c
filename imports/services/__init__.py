"""Imports' services: ``jobs`` (create, cancel, run), ``oci`` (registry images), ``urls``
(disk images at a URL), ``disk`` (the disk layout), ``tools`` (running skopeo, umoci,
mke2fs under watch), ``layers`` (what a layer may hold), ``secrets`` (credentials in flight).
"""
