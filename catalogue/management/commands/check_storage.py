"""``manage.py check_storage [--verify]``: do the image root and the database agree?

Run it after a restore from backup (docs/operations.md), a move of the image
root, or a disk's failure, with no upload or job running:

* every version has its file, and every file under the image root belongs to
  a version (a ``.part`` is an upload in progress or debris);
* ``--verify`` also reads every version back whole (decompressing it) and
  compares its SHA-256 with the one recorded at upload: hours for a big
  catalogue, but the only proof that the bytes came back intact.

It reads only. Exit status 0 when they agree, 1 otherwise, one line per
disagreement.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalogue.models import Version
from catalogue.services.digests import version_read_back
from catalogue.services.processing import storage_audit


class Command(BaseCommand):
    help = "Compare the image root with the database (and, with --verify, every version's bytes)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--verify",
            action="store_true",
            help="read every version back and compare its SHA-256 with the recorded one",
        )

    def handle(self, *args: Any, verify: bool = False, **options: Any) -> None:
        audit = storage_audit()
        problems = [
            f"missing: version {number} of image {image} ({image}/{name})"
            for image, number, name in audit.missing_files
        ]
        problems += [
            f"stray: {where} belongs to no version"
            for where in audit.stray_files
            if where not in audit.parts
        ]
        problems += [f"unfinished upload: {where}" for where in audit.parts]
        versions = Version.objects.order_by("image_id", "number")
        checked = 0
        if verify:
            missing = {(image, number) for image, number, _ in audit.missing_files}
            for version in versions.iterator():
                if (str(version.image_id), version.number) in missing:
                    continue
                reason = version_read_back(version)
                checked += 1
                if reason:
                    problems.append(
                        f"differs: version {version.number} of image {version.image_id}: {reason}"
                    )
        for line in problems:
            self.stderr.write(line)
        summary = f"{versions.count()} versions"
        summary += f", {checked} read back" if verify else ""
        if problems:
            raise CommandError(f"{summary}: {len(problems)} problem(s), listed above.")
        self.stdout.write(f"{summary}: the image root and the database agree.")
