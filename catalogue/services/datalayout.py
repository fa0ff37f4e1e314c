"""Where each range of a version's data map is in the data stream agents download.

The data stream (``catalogue.services.datastream``) is the bytes of the map's
ranges in order: raw, or one zstd frame per range. An agent that needs only
some ranges (a delta re-flash, ``flashing.services.deltas``) asks for them with
``?ranges=`` (:func:`data_stream_select`: one request for many ranges, or
blocks of ranges), or by
byte range of the whole stream; :func:`data_layout` says which bytes those are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from catalogue.models import Compression, Version
from catalogue.services import datastream, rendition_delivery, renditions
from catalogue.services.datamaps import version_map
from catalogue.services.renditions import RenditionFailed, RenditionNotReady
from diskimage.datamap import DataMap
from diskimage.selection import parse_pieces, parse_selection


def written_map(version: Version) -> DataMap | None:
    """The map of the bytes the version puts on a disk (a qcow2's: its raw rendition's)."""
    if renditions.is_qcow2(version):
        try:
            return rendition_delivery.rendition_map(version)
        except (RenditionNotReady, RenditionFailed):
            return None
    return version_map(version)


def data_layout(version: Version) -> tuple[DataMap, list[tuple[int, int]]] | None:
    """The written map and, per range, ``(offset, length)`` in the version's data stream.

    None when the version has no data stream now (stored gzip, no map yet, a
    rendition being made): then there is nothing to ask ranges of.
    """
    datamap = written_map(version)
    if datamap is None:
        return None
    try:
        if renditions.is_qcow2(version):
            stream: datastream.DataStream | None = rendition_delivery.rendition_data_open(version)
        else:
            stream = datastream.data_stream_open(version)
    except (RenditionNotReady, RenditionFailed):
        return None
    if stream is None:
        return None
    stream.close()
    if len(stream.pieces) != len(datamap.ranges):
        return None
    layout, offset = [], 0
    for _, length in stream.pieces:
        layout.append((offset, length))
        offset += length
    return datamap, layout


@dataclass
class SelectedDataStream(datastream.DataStream):
    """Some ranges of a data stream, in order: named by the whole stream's tag and the choice."""

    whole_etag: str = ""
    selection: str = ""

    def etag(self) -> str:
        chosen = hashlib.sha256(self.selection.encode()).hexdigest()[:16]
        return f'{self.whole_etag[:-1]}.ranges.{chosen}"'


def data_stream_select(stream: datastream.DataStream, spec: str | None) -> datastream.DataStream:
    """``stream`` reduced to the map ranges ``spec`` names (None: all of it).

    Whole ranges alone (``1,4-6,9``) come as the stream holds them; a selection
    that names blocks of a range (``4/0-3``) comes raw, every piece of it (a
    zstd stream's frames decoded on the way). Raises ValueError for a malformed
    or out-of-range ``spec``.
    """
    if spec is None:
        return stream
    if "/" not in spec:
        indices = parse_selection(spec, len(stream.pieces))
        return SelectedDataStream(
            stream.version,
            stream.file,
            [stream.pieces[index] for index in indices],
            stream.compression,
            whole_etag=stream.etag(),
            selection=spec,
        )
    bounds = _bounds(stream)
    pieces = parse_pieces(spec, [end - start for start, end in bounds])
    chosen = [(bounds[index][0] + start, end - start) for index, start, end in pieces]
    if stream.compression == Compression.NONE:  # the pieces are where the image's bytes are
        return SelectedDataStream(
            stream.version,
            stream.file,
            chosen,
            Compression.NONE,
            whole_etag=stream.etag(),
            selection=spec,
        )
    return datastream.DecodedDataStream(
        stream.version,
        stream.file,
        chosen,
        Compression.NONE,
        bounds=bounds,
        frames=stream.pieces,
        whole_etag=stream.etag(),
        selection=spec,
    )


def _bounds(stream: datastream.DataStream) -> list[tuple[int, int]]:
    """``[start, end)`` in the image of each piece (range) of a whole data stream."""
    if stream.compression == Compression.NONE:  # a raw file: offsets are the image's
        return [(offset, offset + length) for offset, length in stream.pieces]
    datamap = version_map(stream.version)
    if datamap is None or len(datamap.ranges) != len(stream.pieces):
        raise ValueError("this version's map is being rebuilt: ask again in a minute")
    return [(start, end) for start, end, _ in datamap.ranges]
