"""One exception type for bad input, and the wrapper that turns it into one clear line."""
import functools
import sys


class ReIDError(Exception):
    """Bad input from the user (config, data, weights): the message names what is at fault."""


def cli_main(main):
    """Run an entry point; a ReIDError ends the run with one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ReIDError as err:
            print(f'error: {err}', file=sys.stderr)
            sys.exit(2)

    return wrapper
