"""A setup's partition table on the dashboard: shown, declared, edited, removed, images pinned
to its partitions, through Django's test client and the same services as the API."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from catalogue.models import ImageFrozen, ImageSetup, ImageType
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory

pytestmark = pytest.mark.django_db

MIB = 1 << 20
GIB = 1 << 30
LAYOUT = {
    "disk": "/dev/sda",
    "partitions": [
        {"label": "root", "size": 4 * MIB, "type": "linux"},
        {"label": "home", "size": None, "type": "home"},
    ],
}


def layout_url(setup: ImageSetup) -> str:
    return reverse("setup-layout", kwargs={"setup_id": setup.pk})


def setup_url(setup: ImageSetup) -> str:
    return reverse("setup", kwargs={"setup_id": setup.pk})


def rows_data(*rows: dict, disk: str = "/dev/sda", **extra) -> dict:
    """The table form as a browser sends it: the disk, the formset's counts, one row each."""
    data = {
        "disk": disk,
        "partitions-TOTAL_FORMS": str(len(rows)),
        "partitions-INITIAL_FORMS": "0",
        "partitions-MIN_NUM_FORMS": "0",
        "partitions-MAX_NUM_FORMS": "1000",
        **extra,
    }
    for index, row in enumerate(rows):
        data.update({f"partitions-{index}-{key}": value for key, value in row.items()})
    return data


def row(label: str, size: str = "", kind: str = "linux", **fields) -> dict:
    return {"label": label, "size": size, "type": kind, **fields}


def version_of(owner, image_type=ImageType.SINGLE, size=64 * 1024, disk="/dev/sda", name=None):
    image = ImageFactory(
        owner=owner, type=image_type, target_disk=disk, **({"name": name} if name else {})
    )
    return VersionFactory(image=image, number=0, content=b"\1" * size)


def pin(signed_in, setup, version, **fields):
    data = {"version": f"{version.image_id}:{version.number}", **fields}
    return signed_in.post(setup_url(setup), data)


def shown_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def page_errors(response) -> str:
    return " ".join(str(e) for e in response.context["layout_forms"].errors)


@pytest.fixture
def setup(user):
    return ImageSetupFactory(owner=user, name="lab")


@pytest.fixture
def table_setup(user):
    return ImageSetupFactory(owner=user, name="one-disk", layout=LAYOUT)


# --- Showing -------------------------------------------------------------------------


def test_a_setup_without_a_table_says_so_and_offers_blank_rows(signed_in, setup):
    response = signed_in.get(setup_url(setup))

    page = response.content.decode()
    assert "No partition table" in page
    assert "Declare a partition table" in page
    editor = response.context["layout_forms"]
    assert editor.table["disk"].value() == "/dev/sda"
    assert len(editor.rows.forms) == 2
    assert "partition" not in response.context["form"].fields  # nothing to pin to


def test_the_table_is_shown_with_each_partitions_device_size_type_and_image(
    signed_in, user, table_setup
):
    system = version_of(user, ImageType.SYSTEM, name="debian")
    assert pin(signed_in, table_setup, system, partition="root").status_code == 302

    page = signed_in.get(setup_url(table_setup)).content.decode()

    assert "A GPT on <code>/dev/sda</code>" in page
    assert "<td><code>/dev/sda1</code></td>" in page
    assert '4 MiB <span class="muted">(4194304 bytes)</span>' in page
    assert "Rest of the disk" in page
    assert "<td><code>home</code></td>" in page
    assert "debian</a> v0" in page
    assert "(partition root)" in page  # and in the images' list, its device
    assert '<code>/dev/sda1</code> <span class="muted">(partition root)' in page


def test_the_editor_shows_the_table_as_it_was_typed(signed_in, table_setup):
    editor = signed_in.get(setup_url(table_setup)).context["layout_forms"]

    shown = [
        (f["label"].value(), f["size"].value(), f["rest"].value(), f["type"].value())
        for f in editor.rows.forms
    ]
    assert shown == [
        ("root", "4M", False, "linux"),
        ("home", "", True, "home"),
        (None, None, None, "linux"),  # one blank row to add a partition
    ]


# --- Declaring and changing ----------------------------------------------------------


def test_a_table_is_declared_with_sizes_as_people_write_them(signed_in, setup):
    data = rows_data(
        row("root", "2G"), row("swap", "512MiB", "swap"), row("home", kind="home", rest="on")
    )

    response = signed_in.post(layout_url(setup), data)

    assert response.status_code == 302
    assert response["Location"] == setup_url(setup) + "#layout"
    setup.refresh_from_db()
    assert setup.layout == {
        "disk": "/dev/sda",
        "partitions": [
            {"label": "root", "size": 2 * GIB, "type": "linux"},
            {"label": "swap", "size": 512 * MIB, "type": "swap"},
            {"label": "home", "size": None, "type": "home"},
        ],
    }
    page = signed_in.get(response["Location"])
    assert shown_messages(page) == ['The partition table of "lab" is saved.']
    assert "<td><code>/dev/sda3</code></td>" in page.content.decode()


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("2G", 2 * GIB),
        ("2 GiB", 2 * GIB),
        ("2g", 2 * GIB),
        ("1.5G", 3 * 512 * MIB),
        ("2048M", 2 * GIB),
        ("1048576", MIB),
        ("1048576B", MIB),
        ("1024K", MIB),
        ("1T", 1 << 40),
    ],
)
def test_a_size_is_read_in_bytes_or_powers_of_1024(signed_in, setup, typed, stored):
    response = signed_in.post(layout_url(setup), rows_data(row("data", typed)))
    assert response.status_code == 302
    setup.refresh_from_db()
    assert setup.layout["partitions"][0]["size"] == stored


def test_blank_rows_are_left_out_and_a_type_left_empty_is_linux(signed_in, setup):
    data = rows_data(row("root", "8M", ""), row("", "", "linux"), row("", "", ""))
    assert signed_in.post(layout_url(setup), data).status_code == 302
    setup.refresh_from_db()
    assert setup.layout["partitions"] == [{"label": "root", "size": 8 * MIB, "type": "linux"}]


@pytest.mark.parametrize(
    ("rows", "disk", "said"),
    [
        (
            [row("a", "1.5M")],
            "/dev/sda",
            "Partition 1 ('a') is 1572864 bytes: a size is a positive whole number of MiB",
        ),
        (
            [row("a", rest="on"), row("b", "8M")],
            "/dev/sda",
            "Partition 1 ('a') has no size: only the last partition may take the rest",
        ),
        ([row("a", "8M"), row("a", "8M")], "/dev/sda", "the label 'a' is used twice"),
        ([row("a b", "8M")], "/dev/sda", "'a b' is not a label"),
        ([row("", "8M")], "/dev/sda", "Partition 1: '' is not a label"),
        ([row("a", "8M", "fat-please")], "/dev/sda", "'fat-please' is not a partition type"),
        ([row("", "")], "/dev/sda", "at least one partition"),
        ([row("a", "8M")], "/dev/disk/by-id/ata-X", "by its kernel name (/dev/sda, /dev/nvme0n1)"),
        ([row("a", "8M")], "sda; reboot", "is not a disk"),
    ],
)
def test_the_services_refusal_is_shown_with_its_numbers_and_nothing_is_saved(
    signed_in, table_setup, rows, disk, said
):
    response = signed_in.post(layout_url(table_setup), rows_data(*rows, disk=disk))

    assert response.status_code == 200
    assert said in page_errors(response)
    assert said.replace("'", "&#x27;") in response.content.decode()
    table_setup.refresh_from_db()
    assert table_setup.layout == LAYOUT


def test_the_page_refuses_what_the_api_refuses_in_the_same_words(
    signed_in, user_client, user, setup
):
    """One rule, two doors: the page's message is the API's ``detail``."""
    sent = {"disk": "/dev/sda", "partitions": [{"label": "a", "size": 3 * MIB // 2}]}
    api = user_client.post(
        f"/api/user/{user.username}/image_setup", {"name": "x", "layout": sent}, format="json"
    )
    page = signed_in.post(layout_url(setup), rows_data(row("a", "1.5M")))

    assert api.status_code == 400
    assert api.json()["detail"] == f"layout: {page_errors(page)}"


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("2GB", "'2GB' is not a size: write 512M, 2G or a number of bytes."),
        ("two", "'two' is not a size: write 512M, 2G or a number of bytes."),
        ("-1G", "'-1G' is not a size: write 512M, 2G or a number of bytes."),
        ("1.0000001K", "'1.0000001K' is not a whole number of bytes."),
    ],
)
def test_a_size_that_is_no_size_is_refused_on_its_row(signed_in, setup, typed, said):
    response = signed_in.post(layout_url(setup), rows_data(row("a", typed)))

    rows = response.context["layout_forms"].rows
    assert rows.forms[0].errors["size"] == [said]
    setup.refresh_from_db()
    assert setup.layout is None


def test_a_row_needs_a_size_or_the_rest_of_the_disk_and_not_both(signed_in, setup):
    data = rows_data(row("a"), row("b", "8M", rest="on"))

    response = signed_in.post(layout_url(setup), data)

    forms = response.context["layout_forms"].rows.forms
    assert forms[0].errors["size"] == ["Give a size, such as 2G, or choose the rest of the disk."]
    assert forms[1].errors["rest"] == ["Give a size or the rest of the disk, not both."]
    assert "Please correct the errors below." in response.content.decode()
    setup.refresh_from_db()
    assert setup.layout is None


def test_a_row_marked_for_removal_leaves_the_table(signed_in, table_setup):
    data = rows_data(
        row("boot", "8M", "esp"), row("root", "4M", DELETE="on"), row("home", rest="on")
    )
    assert signed_in.post(layout_url(table_setup), data).status_code == 302
    table_setup.refresh_from_db()
    labels = [p["label"] for p in table_setup.layout["partitions"]]
    assert labels == ["boot", "home"]


def test_add_a_partition_without_scripts_shows_the_rows_sent_and_one_more(signed_in, setup):
    data = rows_data(row("root", "2G"), row("home"), disk="/dev/vda", more="1")

    response = signed_in.post(layout_url(setup), data)

    assert response.status_code == 200
    editor = response.context["layout_forms"]
    assert editor.table["disk"].value() == "/dev/vda"
    assert [(f["label"].value(), f["size"].value()) for f in editor.rows.forms] == [
        ("root", "2G"),
        ("home", ""),
        (None, None),
    ]
    page = response.content.decode()
    assert 'name="partitions-TOTAL_FORMS" value="3"' in page
    assert editor.errors == []
    assert 'class="error"' not in page and 'role="alert"' not in page  # nothing was checked
    setup.refresh_from_db()
    assert setup.layout is None  # nothing is saved by adding a row


def test_a_broken_row_count_is_refused_without_saving(signed_in, setup):
    data = rows_data(row("root", "2G"))
    del data["partitions-TOTAL_FORMS"]

    response = signed_in.post(layout_url(setup), data)

    assert response.status_code == 200
    assert "ManagementForm data is missing" in page_errors(response)
    setup.refresh_from_db()
    assert setup.layout is None


def test_a_table_holds_at_most_128_partitions_as_gpt_says(signed_in, setup):
    rows = [row(f"p{n}", "1M") for n in range(129)]
    response = signed_in.post(layout_url(setup), rows_data(*rows))
    assert "A partition table holds at most 128 partitions, not 129." in page_errors(response)
    setup.refresh_from_db()
    assert setup.layout is None


def test_shrinking_a_partition_under_its_image_is_refused_and_the_table_stays(
    signed_in, user, table_setup
):
    version = version_of(user, size=3 * MIB, name="os")
    assert pin(signed_in, table_setup, version, partition="root").status_code == 302

    data = rows_data(row("root", "2M"), row("home", rest="on", kind="home"))
    response = signed_in.post(layout_url(table_setup), data)

    assert response.status_code == 200
    assert page_errors(response) == (
        '"os" is in this setup: Version 0 of "os" is 3145728 bytes (3.0 MiB); '
        "partition 'root' holds 2097152 bytes (2.0 MiB)."
    )
    table_setup.refresh_from_db()
    assert table_setup.layout == LAYOUT
    # The form keeps what was typed, to correct it.
    assert response.context["layout_forms"].rows.forms[0]["size"].value() == "2M"


# --- Removing ------------------------------------------------------------------------


def test_the_table_is_removed(signed_in, table_setup):
    response = signed_in.post(layout_url(table_setup), rows_data(remove="1"))
    assert response.status_code == 302
    table_setup.refresh_from_db()
    assert table_setup.layout is None
    page = signed_in.get(response["Location"])
    assert shown_messages(page) == ['The partition table of "one-disk" is removed.']
    assert "No partition table" in page.content.decode()


def test_a_table_with_images_in_it_is_not_removed(signed_in, user, table_setup):
    version = version_of(user, name="os")
    assert pin(signed_in, table_setup, version, partition="root").status_code == 302

    response = signed_in.post(layout_url(table_setup), rows_data(remove="1"))

    assert response.status_code == 200
    assert "\"os\" is in this setup: This setup's partition table has no partition 'root'" in (
        page_errors(response)
    )
    table_setup.refresh_from_db()
    assert table_setup.layout == LAYOUT


# --- Pinning images to partitions ----------------------------------------------------


def test_the_image_form_offers_the_tables_partitions(signed_in, table_setup):
    form = signed_in.get(setup_url(table_setup)).context["form"]
    assert form.fields["partition"].choices == [
        ("", "None: a whole disk"),
        ("root", "root (/dev/sda1, 4 MiB)"),
        ("home", "home (/dev/sda2, rest of the disk)"),
    ]
    assert "/dev/sda, the partition table's disk" in form.fields["partition"].help_text


def test_the_partition_choice_says_what_a_partition_already_holds(signed_in, user, table_setup):
    assert (
        pin(signed_in, table_setup, version_of(user, name="os"), partition="root").status_code
        == 302
    )
    form = signed_in.get(setup_url(table_setup)).context["form"]
    assert form.fields["partition"].choices[1] == ("root", "root (/dev/sda1, 4 MiB; holds os v0)")


def test_a_system_and_a_user_data_image_are_pinned_to_their_partitions(
    signed_in, user, other_user, table_setup
):
    system = version_of(other_user, ImageType.SYSTEM, size=2 * MIB)
    home = version_of(user, ImageType.USER_DATA)

    assert pin(signed_in, table_setup, system, partition="root").status_code == 302
    assert pin(signed_in, table_setup, home, partition="home").status_code == 302

    pinned = {f.partition: (f.image_id, f.disk, f.sync) for f in table_setup.frozen_images.all()}
    assert pinned == {
        "root": (system.image_id, "/dev/sda1", False),
        "home": (home.image_id, "/dev/sda2", True),
    }


def test_an_image_for_the_tables_disk_without_a_partition_is_told_to_choose_one(
    signed_in, user, table_setup
):
    response = pin(signed_in, table_setup, version_of(user, name="os"))

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        '"os" would be written over the whole of /dev/sda, which holds this setup\'s '
        "partition table: pin it to one of its partitions (partition: a label)."
    ]
    assert not ImageFrozen.objects.exists()


def test_an_image_larger_than_its_partition_is_refused_with_the_numbers(
    signed_in, user, table_setup
):
    big = version_of(user, size=5 * MIB, name="big")

    response = pin(signed_in, table_setup, big, partition="root")

    assert response.status_code == 200
    assert response.context["form"].errors["partition"] == [
        'Version 0 of "big" is 5242880 bytes (5.0 MiB); '
        "partition 'root' holds 4194304 bytes (4.0 MiB)."
    ]
    assert not ImageFrozen.objects.exists()


def test_a_partition_that_is_not_in_the_table_is_not_a_choice(signed_in, user, table_setup):
    response = pin(signed_in, table_setup, version_of(user), partition="data")
    assert "Select a valid choice" in response.context["form"].errors["partition"][0]
    assert not ImageFrozen.objects.exists()


def test_an_image_form_posted_after_a_table_refusal_goes_to_the_setup_page(signed_in, setup):
    """The page shown again by the table's URL still sends the image form to the setup."""
    page = signed_in.post(layout_url(setup), rows_data(row("a", "1.5M"))).content.decode()
    assert f'<form method="post" action="{setup_url(setup)}"' in page


# --- Who may -------------------------------------------------------------------------


def test_another_users_table_is_not_found_and_stays(signed_in, other_user):
    foreign = ImageSetupFactory(owner=other_user, layout=LAYOUT)

    assert signed_in.get(layout_url(foreign)).status_code == 404
    assert signed_in.post(layout_url(foreign), rows_data(row("x", "8M"))).status_code == 404
    assert signed_in.post(layout_url(foreign), rows_data(remove="1")).status_code == 404
    foreign.refresh_from_db()
    assert foreign.layout == LAYOUT


def test_anonymous_visitors_are_sent_to_sign_in(client, table_setup):
    response = client.post(layout_url(table_setup), rows_data(remove="1"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    table_setup.refresh_from_db()
    assert table_setup.layout == LAYOUT


def test_the_tables_url_leads_to_the_setup_page(signed_in, setup):
    response = signed_in.get(layout_url(setup))
    assert response.status_code == 302
    assert response["Location"] == setup_url(setup) + "#layout-form"


def test_the_setup_list_says_which_setups_have_a_table(signed_in, setup, table_setup):
    page = signed_in.get(reverse("setups")).content.decode()
    assert page.count("partition table on <code>/dev/sda</code>") == 1


def test_the_setup_page_costs_the_same_queries_whatever_its_images(
    signed_in, user, table_setup, django_assert_max_num_queries
):
    """The table, its pins and the images' list come from the setup's prefetched images."""
    table_setup.layout = {
        "disk": "/dev/sda",
        "partitions": [{"label": f"p{n}", "size": MIB, "type": "linux"} for n in range(4)],
    }
    table_setup.save()
    assert pin(signed_in, table_setup, version_of(user), partition="p0").status_code == 302
    with CaptureQueriesContext(connection) as one:
        assert signed_in.get(setup_url(table_setup)).status_code == 200
    queries = len(one)  # now: the next request clears Django's query log
    assert queries > 0
    for n in (1, 2, 3):
        assert pin(signed_in, table_setup, version_of(user), partition=f"p{n}").status_code == 302

    with django_assert_max_num_queries(queries):
        page = signed_in.get(setup_url(table_setup)).content.decode()
    assert "/dev/sda4" in page


def test_a_flood_of_rows_is_refused_without_building_them(signed_in, setup):
    data = rows_data(row("root", "2G"))
    data["partitions-TOTAL_FORMS"] = "100000000"

    response = signed_in.post(layout_url(setup), data)

    assert response.status_code == 200
    assert "Please submit at most 512 forms." in page_errors(response)
    setup.refresh_from_db()
    assert setup.layout is None
