"""Feature extraction and evaluation, shared by the trainers and the test scripts."""
import torch
from tqdm import tqdm

from utils import distributed as du
from utils.checkpoint import unwrap
from utils.logger import get_logger
from utils.protocols import format_sweep


def _sie(cfg, camids, viewids, device):
    cam = camids.to(device) if cfg.MODEL.SIE_CAMERA else None
    view = viewids.to(device) if cfg.MODEL.SIE_VIEW else None
    return cam, view


@torch.no_grad()
def extract_features(cfg, encode, loader, runtime, desc='features'):
    """Run `encode(images, cam_label, view_label)` over a loader in order.

    Runs under the run's mixed precision (SOLVER.AMP), as upstream builds its stage-1 cache
    and PCL memory under autocast. Returns float32 features and pids on the run's device.
    Under DDP each rank encodes its share of the loader (make_dataloader shards it at batch
    boundaries) and the shares are gathered in rank order: every rank holds the features of
    the whole set, bit-identical across ranks and to a single process's.
    """
    feats, pids = [], []
    amp = runtime.amp_dtype
    for batch in tqdm(loader, desc=desc, leave=False, disable=not du.is_main_process()):
        images, pid, camid, viewid = batch[:4]
        cam, view = _sie(cfg, camid, viewid, runtime.device)
        with torch.autocast(runtime.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = encode(images.to(runtime.device, non_blocking=True), cam, view)
        feats.append(out.float())
        pids.append(pid.to(runtime.device))
    if du.is_dist():
        dim = max(du.all_gather_object(feats[0].shape[1] if feats else 0))
        feats = [torch.zeros(0, dim, device=runtime.device)] + feats  # a rank may have none
        pids = [torch.zeros(0, dtype=torch.int64, device=runtime.device)] + pids
        return du.all_gather_tensor(torch.cat(feats)), du.all_gather_tensor(torch.cat(pids))
    return torch.cat(feats), torch.cat(pids)


@torch.no_grad()
def do_inference(cfg, model, val_loader, evaluator, runtime, split=None):
    """Features of this rank's share of query+gallery; the evaluator gathers and scores.

    `split` names what is scored in the log's heading ('Results on the <split> (...):', e.g.
    'validation split' or 'test split, last checkpoint (epoch 60)'); without it the heading
    is 'Validation results (...):' as it always was.

    Always in float32, whatever SOLVER.AMP says (upstream evaluates in fp32): a checkpoint
    scores the same after a mixed-precision or a full-precision run.
    """
    logger = get_logger()
    model = unwrap(model)  # no DDP syncs while ranks hold different numbers of batches
    model.eval()
    evaluator.reset()
    for images, pids, camids, viewids, paths in tqdm(val_loader, desc='evaluate', leave=False,
                                                     disable=not du.is_main_process()):
        cam, view = _sie(cfg, camids, viewids, runtime.device)
        with torch.autocast(runtime.device.type, enabled=False):  # even inside a caller's
            feat = model(images.to(runtime.device, non_blocking=True), cam_label=cam,
                         view_label=view)
        evaluator.update((feat.float(), pids, camids, list(paths)))
    if getattr(evaluator, 'visualize', 0) and cfg.TEST.VISUALIZE_HEATMAP:  # heat rank lists
        from .heatmaps import HeatMapper
        evaluator.heat_mapper = HeatMapper(model, cfg, runtime.device)
    result = evaluator.compute()
    if split:
        logger.info('Results on the %s (%s):', split, evaluator.describe())
    else:
        logger.info('Validation results (%s):', evaluator.describe())
    for name, value in result.summary().items():
        logger.info('%-24s %.1f%%', name, 100 * value)
    if result.skipped_queries:
        logger.info('%d of %d queries have no valid match in the gallery: left out of the '
                    'figures above', result.skipped_queries, len(result.q_pids))
    if 'rerank_sweep' in result.extra:
        logger.info('Re-ranking sweep (the first row is the result above):')
        for line in format_sweep(result.extra['rerank_sweep']):
            logger.info(line)
    return result
