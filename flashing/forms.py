"""Forms of the machine pages: lease or extend, deploy a setup.

They validate what a person typed; the services decide whether it may happen.
"""

from __future__ import annotations

from typing import Any

from django import forms

from accounts.rules import Actor
from catalogue.interface import setup_list_usable
from catalogue.models import ImageSetup
from flashing.services.leases import lease_limits


class LeaseForm(forms.Form):
    """Lease a free machine, or extend the lease one holds, by ``hours``."""

    hours = forms.IntegerField(label="Hours")  # bounds from the settings, below

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default, maximum = lease_limits()
        self.fields["hours"] = forms.IntegerField(
            label="Hours",
            min_value=1,
            max_value=maximum,
            initial=default,
            help_text=f"A lease lasts at most {maximum} hours in all.",
        )


class SetupChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ImageSetup) -> str:
        return f"{obj.name} ({obj.owner.username})"


class DeployForm(forms.Form):
    """Queue one of the setups ``user`` may flash."""

    setup = SetupChoiceField(
        queryset=ImageSetup.objects.none(),
        label="Setup",
        empty_label=None,
        to_field_name="uuid",
    )
    sync = forms.BooleanField(
        required=False,
        label="Bring the machine's user data back first",
        help_text="Uploads the disks marked for sync as new versions before writing.",
    )

    def __init__(self, *args: Any, user: Actor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        setup_field = self.fields["setup"]
        assert isinstance(setup_field, forms.ModelChoiceField)
        setup_field.queryset = setup_list_usable(user=user)
