"""One exception type for bad input, and the wrapper that turns errors into one clear line."""
import functools
import logging
import sys
import traceback


class ReIDError(Exception):
    """Bad input from the user (config, data, weights): the message names what is at fault."""


def one_line(err):
    """The message of err on one line. torch re-raises an error of a DataLoader worker with
    the worker's traceback as its message: keep the original message (its last line)."""
    text = str(err)
    if 'Original Traceback' in text:
        text = text.rstrip().splitlines()[-1].split(': ', 1)[-1]
    return ' '.join(line.strip() for line in text.splitlines() if line.strip())


def _traceback_to_log():
    """Append the current traceback to the run's log file; its path ('' before logging starts)."""
    for handler in logging.getLogger('reid').handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(traceback.format_exc())
            handler.flush()
            return handler.baseFilename
    return ''


def cli_main(main):
    """Run an entry point so that it ends with one line on stderr, never a traceback on screen:
    a ReIDError (bad input) exits with code 2; any other error exits with code 1 and its
    traceback goes to the log file (or to stderr when no log file is open yet)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ReIDError as err:
            print(f'error: {one_line(err)}', file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print('error: interrupted', file=sys.stderr)
            sys.exit(130)
        except Exception as err:  # noqa: BLE001 - an unforeseen failure or a bug
            log = _traceback_to_log()
            if not log:
                traceback.print_exc()
            where = f' (traceback in {log})' if log else ''
            print(f'error: {type(err).__name__}: {one_line(err)}{where}', file=sys.stderr)
            sys.exit(1)

    return wrapper
