"""Any partition list sent to the setup API: stored as sent and placeable, or refused in words."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from catalogue.models import ImageSetup
from diskimage import gpt

pytestmark = pytest.mark.django_db

MIB = gpt.MIB
sizes = st.one_of(
    st.none(),
    st.integers(1, 64).map(lambda n: n * MIB),
    st.integers(-MIB, 70 * MIB),
    st.sampled_from(["1G", 1.5, True]),
)
partitions = st.fixed_dictionaries(
    {
        "label": st.one_of(st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True), st.text()),
        "size": sizes,
    },
    optional={"type": st.sampled_from(["linux", "home", "esp", "ntfs", "not-a-guid"])},
)


@given(items=st.lists(partitions, max_size=6))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_a_table_is_stored_as_sent_and_placeable_or_refused_with_nothing_stored(
    user_client, user, items
):
    before = ImageSetup.objects.count()
    layout = {"disk": "/dev/sda", "partitions": items}

    response = user_client.post(
        f"/api/user/{user.username}/image_setup", {"name": "x", "layout": layout}, format="json"
    )

    event(f"answered {response.status_code}")
    if response.status_code == 400:
        assert response.json()["detail"].startswith("layout: ")
        assert ImageSetup.objects.count() == before
        return
    assert response.status_code == 201, response.content
    shown = response.json()["layout"]["partitions"]
    assert [(p["label"], p["size"]) for p in shown] == [(i["label"], i["size"]) for i in items]
    specs = [gpt.Spec(p["label"], p["size"], p["type"]) for p in shown]
    placed = gpt.plan(gpt.fixed_bytes(specs), specs)  # the least disk it needs holds it
    assert all(a.end <= b.start for a, b in itertools.pairwise(placed))
