"""The zh_Hans catalogues are complete: `makemessages` finds no msgid they lack, no entry is empty or
fuzzy, and the committed .mo files hold what the .po files say (so no one forgot compilemessages).

GNU gettext's own tools read the catalogues (msgen, msgfmt: compilemessages needs them anyway), and
the standard library's gettext reads the compiled result."""
from __future__ import annotations

import gettext
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

LOCALE = Path(settings.BASE_DIR) / "locale"
DOMAINS = sorted(p.stem for p in (LOCALE / "zh_Hans" / "LC_MESSAGES").glob("*.po"))
IGNORED = [".venv*", "tests", "bench", "var"]  # as in README's makemessages command

pytestmark = pytest.mark.skipif(not shutil.which("msgfmt"), reason="GNU gettext (msgfmt) is not installed")


def compiled(po: Path, tmp: Path, *, every_msgid: bool = False) -> dict:
    """{msgid: msgstr} of a .po as msgfmt compiles it: translated, non-fuzzy entries only; with
    every_msgid, each msgid standing for itself (msgen), so untranslated ones are listed too."""
    source = po
    if every_msgid:
        source = tmp / f"{po.stem}.all.po"
        subprocess.run(["msgen", "-o", str(source), str(po)], check=True)
    mo = tmp / f"{po.stem}.{'all' if every_msgid else 'done'}.mo"
    flags = ["--use-fuzzy"] if every_msgid else ["--check-format"]  # only the msgids count there
    subprocess.run(["msgfmt", *flags, "-o", str(mo), str(source)], check=True)
    return read_mo(mo)


def read_mo(mo: Path) -> dict:
    with mo.open("rb") as f:
        catalog = dict(gettext.GNUTranslations(f)._catalog)
    catalog.pop("", None)  # the header
    return catalog


def as_text(keys) -> str:
    return "\n".join(f"  {k!r}" for k in sorted(keys, key=str))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The catalogues as `makemessages` would write them now, into a copy of the locale folder.

    makemessages writes beside the `locale` folder of the tree it walks, so it walks a tree of links
    to the project's folders with the copy as its `locale` (the real catalogues stay untouched)."""
    tree = tmp_path_factory.mktemp("tree")
    base = Path(settings.BASE_DIR)
    for entry in base.iterdir():
        if entry.name not in ("locale", ".git", "var", "tests", "bench") and not entry.name.startswith(".venv"):
            (tree / entry.name).symlink_to(entry)
    copy = tree / "locale"
    shutil.copytree(LOCALE, copy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "LOCALE_PATHS", [copy])
        mp.chdir(tree)
        for domain in DOMAINS:
            call_command("makemessages", locale=["zh_Hans"], domain=domain, ignore_patterns=IGNORED,
                         no_obsolete=True, symlinks=True, verbosity=0)
    return copy


@pytest.mark.parametrize("domain", DOMAINS)
def test_makemessages_finds_no_string_the_catalogue_lacks_and_none_is_empty_or_fuzzy(domain, fresh, tmp_path):
    wanted = compiled(fresh / "zh_Hans" / "LC_MESSAGES" / f"{domain}.po", tmp_path, every_msgid=True)
    done = compiled(LOCALE / "zh_Hans" / "LC_MESSAGES" / f"{domain}.po", tmp_path)
    assert len(wanted) >= 20  # makemessages found the project's sources
    missing = set(wanted) - set(done)
    assert not missing, (f"locale/zh_Hans/LC_MESSAGES/{domain}.po lacks a translation (new, empty or fuzzy) for:\n"
                         f"{as_text(missing)}\nrun makemessages (README), translate, then compilemessages")
    assert all(str(v).strip() for v in done.values())


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_committed_mo_file_holds_what_the_po_file_says(domain, tmp_path):
    po = LOCALE / "zh_Hans" / "LC_MESSAGES" / f"{domain}.po"
    committed = read_mo(po.with_suffix(".mo"))
    stale = {k for k, v in compiled(po, tmp_path).items() if committed.get(k) != v}
    assert not stale, f"{po.with_suffix('.mo')} is out of date for:\n{as_text(stale)}\nrun compilemessages"
