"""Running the command line in a test: ``run_cli(argv, capsys) -> (exit status, stdout, stderr)``."""
from memcim.cli import main


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of ``memcim argv``; ``main`` returns usage errors as 2 itself."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err
