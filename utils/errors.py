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


def _to_log(text):
    """Append text to the run's log file; its path ('' before logging starts or off rank 0)."""
    for handler in logging.getLogger('reid').handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(text)
            handler.flush()
            return handler.baseFilename
    return ''


def _fail(line, code):
    _to_log(line + '\n')
    print(line, file=sys.stderr)
    sys.exit(code)


def cli_main(main):
    """Run an entry point so that it ends with one line on stderr, never a traceback on screen.
    Bad input (ReIDError) and files the system refuses (OSError) exit with code 2; any other
    error is a bug: exit code 1, its traceback in the log file (on stderr when no log file is
    open yet). The log file also records the error line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ReIDError, OSError) as err:
            _fail(f'error: {one_line(err)}', 2)
        except KeyboardInterrupt:
            _fail('error: interrupted', 130)
        except Exception as err:  # noqa: BLE001 - a bug: keep its traceback for the report
            log = _to_log(traceback.format_exc())
            if not log:
                traceback.print_exc()
            where = f' (traceback in {log})' if log else ''
            _fail(f'error: {type(err).__name__}: {one_line(err)}{where}', 1)

    return wrapper
