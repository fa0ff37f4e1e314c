"""The setup page's table form and the API agree on any table: same layout stored, or the
same refusal in the same words (one rule, two doors); sizes as typed read back exactly."""

from __future__ import annotations

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from catalogue.forms_setups import parse_size, size_input, size_text
from catalogue.models import ImageSetup
from diskimage import gpt
from tests.catalogue.factories import ImageSetupFactory

pytestmark = pytest.mark.django_db

MIB = gpt.MIB

# A size as the API takes it (bytes or null) and as a person types it on the page.
sizes = st.one_of(
    st.none(),
    st.integers(1, 4096).map(lambda n: n * MIB),
    st.integers(0, 70 * MIB),
)
rows = st.fixed_dictionaries(
    {
        "label": st.one_of(
            st.sampled_from(["root", "home", "boot", "a b", "-x", "x" * 37]),
            st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True),
        ),
        "size": sizes,
        "type": st.sampled_from(["linux", "home", "esp", "swap", "ntfs", "HOME"]),
        "typed": st.sampled_from(["input", "bytes"]),
    }
)


def page_data(items: list[dict]) -> dict:
    data = {
        "disk": "/dev/sda",
        "partitions-TOTAL_FORMS": str(len(items)),
        "partitions-INITIAL_FORMS": "0",
    }
    for index, item in enumerate(items):
        name = f"partitions-{index}-"
        size = item["size"]
        if size is None:
            data[name + "rest"] = "on"
        else:
            data[name + "size"] = size_input(size) if item["typed"] == "input" else str(size)
        data[name + "label"] = item["label"]
        data[name + "type"] = item["type"]
    return data


@given(items=st.lists(rows, min_size=1, max_size=5))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_the_page_stores_what_the_api_stores_and_refuses_what_it_refuses(
    signed_in, user_client, user, items
):
    setup = ImageSetupFactory(owner=user)
    sent = {
        "disk": "/dev/sda",
        "partitions": [{k: item[k] for k in ("label", "size", "type")} for item in items],
    }
    api = user_client.post(
        f"/api/user/{user.username}/image_setup", {"name": "x", "layout": sent}, format="json"
    )
    page = signed_in.post(reverse("setup-layout", kwargs={"setup_id": setup.pk}), page_data(items))

    event(f"API {api.status_code}, page {page.status_code}")
    setup.refresh_from_db()
    if api.status_code == 400:
        assert page.status_code == 200
        assert api.json()["detail"] == "layout: " + " ".join(page.context["layout_forms"].errors)
        assert setup.layout is None
    else:
        assert (api.status_code, page.status_code) == (201, 302), page.content
        stored = ImageSetup.objects.get(uuid=api.json()["uuid"]).layout
        assert setup.layout == stored


@given(size=st.integers(1, 1 << 50))
def test_a_size_shown_in_the_form_reads_back_as_the_same_bytes(size):
    assert parse_size(size_input(size)) == size
    assert size_text(size).startswith(size_input(size).rstrip("KMGT"))


@given(text=st.text(max_size=12))
def test_any_text_is_a_whole_number_of_bytes_or_refused_in_words(text):
    try:
        size = parse_size(text)
    except ValueError as exc:
        assert f"'{text}' is not" in str(exc)
    else:
        assert isinstance(size, int) and size >= 0
