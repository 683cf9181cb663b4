"""Every script answers --help with its usage and exit status 0 (help texts hold '%' and other
characters argparse formats)."""

from __future__ import annotations

import pytest
from conftest import ROOT, script_main

SCRIPTS = sorted(path.stem for path in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_answers_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        script_main(name)(["--help"])
    assert done.value.code in (0, None)
    assert capsys.readouterr().out.startswith("usage:")
