"""What a layer may hold, checked without a registry: paths, whiteouts, owners, sizes."""

from __future__ import annotations

import io
import posixpath
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imports.services.layers import LayerRefused, LayersTooLarge, Tree, clean_name, scan_layer
from tests.imports.oci import Entry, directory, file, layer_tar

segments = st.sampled_from(["a", "b", "..", ".", "", "etc", ".wh.x", "c d"])


@given(st.lists(segments, min_size=1, max_size=8), st.booleans())
def test_a_clean_name_never_leads_out_of_the_root(parts, absolute):
    name = ("/" if absolute else "") + "/".join(parts)
    try:
        clean = clean_name(name)
    except LayerRefused:
        assert name.startswith("/") or posixpath.normpath(name).startswith("..")
        return
    assert not clean.startswith("/") and not clean.startswith("..")
    joined = posixpath.normpath(posixpath.join("/root", clean))
    assert joined == "/root" or joined.startswith("/root/")


def scan(*layers: list[Entry], limit: int = 1 << 30) -> Tree:
    tree = Tree()
    for entries in layers:
        scan_layer(io.BytesIO(layer_tar(entries)), tree, limit=limit)
    return tree


def test_whiteouts_remove_files_and_opaque_directories_empty_theirs():
    tree = scan(
        [directory("d"), file("d/a", "1"), directory("d/sub"), file("d/sub/x", "2"), file("f", "")],
        [file(".wh.f", ""), directory("d"), file("d/.wh..wh..opq", ""), file("d/b", "3")],
    )
    assert set(tree.owners) == {"d", "d/b"}


def test_a_file_replacing_a_directory_takes_what_it_held_away():
    tree = scan([directory("x"), file("x/inner", "1")], [file("x", "now a file")])
    assert set(tree.owners) == {"x"}


def test_owners_come_from_the_last_layer_that_wrote_the_path():
    tree = scan([file("etc/shadow", "", uid=0, gid=0)], [file("etc/shadow", "", uid=0, gid=42)])
    assert tree.owners["etc/shadow"] == (0, 42)


def test_the_scan_stops_as_soon_as_the_layers_pass_the_limit():
    with pytest.raises(LayersTooLarge):
        scan([file("a", bytes(4096)), file("b", bytes(4096))], limit=5000)


def test_a_setuid_file_of_root_is_kept_and_of_another_user_refused():
    assert scan([file("bin/su", "x", mode=0o4755)]).owners["bin/su"] == (0, 0)
    with pytest.raises(LayerRefused, match="set-user-ID to user 7"):
        scan([file("bin/tool", "x", mode=0o4755, uid=7)])


def test_a_character_device_is_refused():
    with pytest.raises(LayerRefused, match="device node 'dev/null'"):
        scan([Entry("dev/null", kind=tarfile.CHRTYPE)])


def test_something_that_is_not_a_tar_is_refused():
    tree = Tree()
    with pytest.raises(LayerRefused, match="not a readable tar"):
        scan_layer(io.BytesIO(b"not a tar at all" * 100), tree, limit=1 << 20)
