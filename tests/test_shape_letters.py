"""Shape suffixes keep to the package's legend (gptjax/__init__.py): a letter outside it fails here."""

import pathlib
import re

import gptjax

PACKAGE = pathlib.Path(gptjax.__file__).parent
SUFFIX = re.compile(r"\b[a-z][a-z0-9_]*?_((?:[A-Z0-9]x)*[A-Z0-9])\b")


def legend() -> list[str]:
    """The letters the legend defines, in order (a letter then two spaces, after the legend's first line)."""
    text = gptjax.__doc__.split("each letter means one", 1)[1]
    return re.findall(r"(?<![\w(,*/])([A-Z0-9])  ", text)


def legend_letters() -> set[str]:
    return set(legend())


def test_the_legend_defines_each_letter_once():
    letters = legend()
    assert len(letters) == len(set(letters)) == 24
    assert {"B", "T", "S", "L", "E", "R", "N", "K", "Q", "G", "M", "P", "Z", "C", "U", "I", "O", "1", "2"} <= set(letters)


def test_every_shape_suffix_in_the_package_uses_legend_letters():
    letters, unknown = legend_letters(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for suffix in SUFFIX.findall(line):
                bad = set(suffix.split("x")) - letters
                if bad:
                    unknown.append(f"{path.relative_to(PACKAGE)}:{number}: {suffix} ({', '.join(sorted(bad))})")
    assert not unknown, "\n".join(unknown)
