"""The bodies of the entry scripts: parse, configure, build, run."""
from config import parse_args
from datasets import make_dataloader
from model import infer_method, make_model
from utils.checkpoint import find_resume_file, load_training_state
from utils.errors import ReIDError
from utils.metrics import make_evaluator
from utils.runtime import config_for, setup_run

from .inference import do_inference
from .recipes import train_baseline, train_clipreid, train_pcl

TRAINERS = {'clipreid': train_clipreid, 'pcl': train_pcl, 'baseline': train_baseline}


def _build(cfg, runtime, training=True):
    data = make_dataloader(cfg, training)
    model = make_model(cfg, data.num_classes, data.camera_num, data.view_num,
                       object_word=data.dataset.object_word)
    return data, model.to(runtime.device)


def train_main(method, description):
    args = parse_args(description)
    cfg = config_for(method, args)
    runtime = setup_run(cfg, 'train_log.txt')
    resume = find_resume_file(cfg, args.resume)
    data, model = _build(cfg, runtime)
    TRAINERS[method](cfg, model, data, runtime,
                     resume_state=load_training_state(resume) if resume else None)


def test_main(description, rerank=False):
    args = parse_args(description)
    cfg = config_for('', args)
    if not cfg.TEST.WEIGHT:
        raise ReIDError('TEST.WEIGHT is empty: give the checkpoint to evaluate, '
                        'e.g. TEST.WEIGHT output/ViT-B-16_60.pth')
    if not cfg.MODEL.METHOD:
        cfg.defrost()
        cfg.MODEL.METHOD = infer_method(cfg.TEST.WEIGHT)
        cfg.freeze()
    if rerank and not cfg.TEST.RE_RANKING:
        cfg.defrost()
        cfg.TEST.RE_RANKING = True
        cfg.freeze()
    runtime = setup_run(cfg, 'test_rerank_log.txt' if rerank else 'test_log.txt')
    data, model = _build(cfg, runtime, training=False)
    model.load_param(cfg.TEST.WEIGHT)
    evaluator = make_evaluator(cfg, data.num_query, data.dataset.protocol)
    return do_inference(cfg, model, data.val_loader, evaluator, runtime)
