"""The run's log file gets the project's lines and INFO lines of other modules (model.*)."""
import logging

from utils.logger import setup_logger


def test_rank0_logs_other_modules_info_to_the_file(tmp_path):
    setup_logger(str(tmp_path), 'log.txt', rank=0)
    logging.getLogger('reid').info('from the project')
    logging.getLogger('model.clip_weights').info('built CLIP from a file')
    text = (tmp_path / 'log.txt').read_text()
    assert 'from the project' in text and 'built CLIP from a file' in text


def test_other_ranks_write_no_file_and_log_only_warnings(tmp_path):
    logger = setup_logger(str(tmp_path), 'log.txt', rank=1)
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    assert not (tmp_path / 'log.txt').exists()
