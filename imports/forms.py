"""The import form of the image page and the admin: the same fields as the API."""

from __future__ import annotations

from django import forms

from imports.models import Layout


class ImportForm(forms.Form):
    oci = forms.CharField(
        label="Container image", required=False, max_length=2000,
        help_text="A registry reference, e.g. docker://docker.io/library/debian:bookworm",
    )  # fmt: skip
    platform = forms.CharField(initial="linux/amd64", max_length=64, required=False)
    layout = forms.ChoiceField(choices=Layout.choices, initial=Layout.FILESYSTEM)
    label = forms.CharField(initial="root", max_length=16, required=False)
    size = forms.IntegerField(
        required=False, min_value=1, help_text="Bytes of the filesystem (empty: fitted)"
    )
    url = forms.CharField(
        label="Or a disk image at a URL", required=False, max_length=2000,
        help_text="raw, qcow2, zstd, gzip or Android sparse",
    )  # fmt: skip
    sha256 = forms.CharField(label="Its SHA-256", required=False, max_length=64)
    username = forms.CharField(required=False, help_text="Registry user (used once, not kept)")
    password = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))

    def request_values(self) -> dict:
        data = dict(self.cleaned_data)
        data["platform"] = data["platform"] or "linux/amd64"
        data["label"] = data["label"] or "root"
        return data
