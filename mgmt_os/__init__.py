"""The BAAS management OS: a Debian kernel and an initramfs that run ``baas-agent``.

Built by ``python -m mgmt_os.build`` (no Django here); see ``mgmt_os/README.md``.
"""
