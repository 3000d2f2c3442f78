"""What the installer's CLI tests share."""

import pytest
from cmdop_install.cli import main


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """The real entry point (`cmdop_install.cli.main`): exit code, stdout, stderr."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
