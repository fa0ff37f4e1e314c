"""Dashboard forms for personal access tokens."""

from __future__ import annotations

from datetime import datetime, time

from django import forms
from django.utils import timezone

from accounts import scopes


class TokenCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What the token is for, such as the laptop or script using it."
    )
    scopes = forms.MultipleChoiceField(
        choices=scopes.CHOICES,
        initial=list(scopes.DEFAULT),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one scope."},
        help_text="What the token may do. Give it admin only if it must change your password, "
        "email or tokens.",
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: the token stops working at the start of this day.",
    )

    def clean_expires_on(self):
        day = self.cleaned_data["expires_on"]
        if day is not None and day <= timezone.localdate():
            raise forms.ValidationError("Choose a day after today.")
        return day

    def expires_at(self) -> datetime | None:
        day = self.cleaned_data["expires_on"]
        if day is None:
            return None
        return timezone.make_aware(datetime.combine(day, time.min))
