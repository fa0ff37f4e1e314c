"""The role table of images and setups: every role against every rule of ``catalogue.rules``."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser

from accounts.models import Role
from catalogue import rules
from catalogue.exceptions import ImageNotFound, NotYours, SetupNotFound
from catalogue.models import Image, ImageType
from catalogue.selectors.images import image_get_deletable, image_get_writable
from catalogue.selectors.setups import setup_list_usable
from catalogue.services.delivery import version_for_download
from catalogue.services.images import image_create, image_delete, image_update
from catalogue.services.setups import setup_create, setup_delete, setup_image_add, setup_update
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageSetupFactory

ROLES = ["anonymous", "user", "owner", "moderator", "maintainer", "administrator", "superuser"]


@pytest.fixture
def people(db):
    owner = UserFactory(role=Role.USER)
    maintainer = UserFactory(role=Role.MODERATOR)
    return {
        "anonymous": AnonymousUser(),
        "user": UserFactory(role=Role.USER),
        "owner": owner,
        "moderator": UserFactory(role=Role.MODERATOR),
        "maintainer": maintainer,
        "administrator": UserFactory(role=Role.ADMINISTRATOR),
        "superuser": UserFactory(role=Role.USER, is_superuser=True),
    }


def make_image(people, image_type: str, owner_role: str = "owner") -> Image:
    image = Image.objects.create(name="img", owner=people[owner_role], type=image_type)
    image.maintainers.add(people["maintainer"])
    return image


# role -> (read, write, delete) for a private image owned by "owner"
PRIVATE = {
    "anonymous": (False, False, False),
    "user": (False, False, False),
    "owner": (True, True, True),
    "moderator": (False, False, False),
    "maintainer": (True, False, False),  # maintainers are only for system images
    "administrator": (True, True, True),
    "superuser": (True, True, True),
}

# role -> (read, write, delete) for a system image owned by a moderator "owner"
SYSTEM = {
    "anonymous": (False, False, False),
    "user": (True, False, False),
    "owner": (True, True, True),
    "moderator": (True, False, False),
    "maintainer": (True, True, False),
    "administrator": (True, True, True),
    "superuser": (True, True, True),
}


@pytest.mark.parametrize("role", ROLES)
def test_private_image_rights_follow_the_role_table(people, role):
    image = make_image(people, ImageType.SINGLE)
    actor = people[role]
    got = (
        rules.can_read_image(actor, image),
        rules.can_write_image(actor, image),
        rules.can_delete_image(actor, image),
    )
    assert got == PRIVATE[role]


@pytest.mark.parametrize("role", ROLES)
def test_system_image_rights_follow_the_role_table(people, role):
    people["owner"].role = Role.MODERATOR
    people["owner"].save()
    image = make_image(people, ImageType.SYSTEM)
    actor = people[role]
    got = (
        rules.can_read_image(actor, image),
        rules.can_write_image(actor, image),
        rules.can_delete_image(actor, image),
    )
    assert got == SYSTEM[role]


def test_a_user_who_owns_a_system_image_still_cannot_change_it(people):
    image = make_image(people, ImageType.SYSTEM, owner_role="user")
    assert rules.can_read_image(people["user"], image)
    assert not rules.can_write_image(people["user"], image)
    assert not rules.can_delete_image(people["user"], image)


@pytest.mark.parametrize(
    ("role", "create_system", "create_single", "admin_images", "assign_maintainers"),
    [
        ("anonymous", False, False, False, False),
        ("user", False, True, False, False),
        ("moderator", True, True, True, False),
        ("administrator", True, True, True, True),
        ("superuser", True, True, True, True),
    ],
)
def test_image_abilities_follow_the_role(
    people, role, create_system, create_single, admin_images, assign_maintainers
):
    actor = people[role]
    assert rules.can_create_image(actor, ImageType.SYSTEM) is create_system
    assert rules.can_create_image(actor, ImageType.SINGLE) is create_single
    assert rules.can_change_image_type(actor, ImageType.SINGLE, ImageType.SYSTEM) is create_system
    assert rules.can_admin_image(actor) is admin_images
    assert rules.can_assign_maintainers(actor) is assign_maintainers


def test_a_moderator_sees_in_the_admin_only_the_system_images_assigned_to_them(people):
    people["owner"].role = Role.MODERATOR
    people["owner"].save()
    system, private = make_image(people, ImageType.SYSTEM), make_image(people, ImageType.SINGLE)
    assert rules.can_admin_image(people["maintainer"], system)
    assert not rules.can_admin_image(people["maintainer"], private)
    assert not rules.can_admin_image(people["moderator"], system)


def test_an_inactive_administrator_reads_no_image(people):
    admin = people["administrator"]
    admin.is_active = False
    admin.save()
    assert not rules.can_read_image(admin, make_image(people, ImageType.SINGLE))


# role -> (create for owner, manage owner's setups, flash owner's setup)
SETUPS = {
    "anonymous": (False, False, False),
    "user": (False, False, False),
    "owner": (True, True, True),
    "moderator": (False, True, False),
    "administrator": (True, True, True),
    "superuser": (True, True, True),
}


@pytest.mark.parametrize("role", list(SETUPS))
def test_setup_rights_follow_the_role_table(people, role):
    owner = people["owner"]
    setup = ImageSetupFactory(owner=owner)
    actor = people[role]
    got = (
        rules.can_create_setup_for(actor, owner),
        rules.can_manage_setups_of(actor, owner),
        rules.can_use_setup(actor, setup),
    )
    assert got == SETUPS[role]


# --- Each service checks its rule itself --------------------------------------------------


def test_a_setup_is_changed_only_by_whoever_manages_its_owners_setups(people):

    setup = ImageSetupFactory(owner=people["owner"], name="mine")
    for service, kwargs in [
        (setup_update, {"name": "theirs"}),
        (setup_image_add, {"image": None, "version_number": 0}),
        (setup_delete, {}),
    ]:
        with pytest.raises(SetupNotFound):
            service(actor=people["user"], setup=setup, **kwargs)
    setup.refresh_from_db()
    assert setup.name == "mine"
    assert setup_update(actor=people["moderator"], setup=setup, name="looked-after").pk


def test_a_setup_is_created_for_someone_else_only_by_an_administrator(people):

    with pytest.raises(SetupNotFound):
        setup_create(actor=people["moderator"], owner=people["owner"], name="theirs")
    assert setup_create(actor=people["administrator"], owner=people["owner"], name="given").pk


def test_an_image_is_created_for_someone_else_only_by_an_administrator(people):

    with pytest.raises(NotYours):
        image_create(actor=people["user"], owner=people["owner"], name="theirs")
    assert not Image.objects.filter(name="theirs").exists()
    assert image_create(actor=people["administrator"], owner=people["owner"], name="given").pk


def test_an_image_is_changed_and_deleted_only_as_its_rules_say(people):

    people["owner"].role = Role.MODERATOR
    people["owner"].save()
    image = make_image(people, ImageType.SYSTEM)
    with pytest.raises(NotYours):
        image_update(actor=people["user"], image=image, description="mine now")
    with pytest.raises(NotYours):
        image_delete(actor=people["maintainer"], image=image)
    image.refresh_from_db()
    assert image.description == ""


def test_the_checking_accessors_answer_404_for_the_unseen_and_403_for_the_unchangeable(people):

    private, system = make_image(people, ImageType.SINGLE), make_image(people, ImageType.SYSTEM)
    with pytest.raises(ImageNotFound):
        image_get_writable(actor=people["user"], image_id=str(private.pk))
    with pytest.raises(NotYours, match="not upload to it"):
        image_get_writable(actor=people["user"], image_id=str(system.pk), doing="upload to")
    with pytest.raises(NotYours, match="owner or an administrator"):
        image_get_deletable(actor=people["maintainer"], image_id=str(system.pk))
    assert image_get_writable(actor=people["maintainer"], image_id=str(system.pk)) == system


def test_a_download_of_an_image_one_may_not_read_answers_as_for_no_image(people):

    image = make_image(people, ImageType.SINGLE)
    with pytest.raises(ImageNotFound):
        version_for_download(user=people["user"], image_uuid=str(image.pk), version="latest")


@pytest.mark.parametrize("role", list(SETUPS))
def test_the_usable_setups_query_says_what_can_use_setup_says(people, role):
    mine, theirs = ImageSetupFactory(owner=people["owner"]), ImageSetupFactory(owner=people["user"])
    usable = set(setup_list_usable(user=people[role]))
    assert usable == {s for s in (mine, theirs) if rules.can_use_setup(people[role], s)}
