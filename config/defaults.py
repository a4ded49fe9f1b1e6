"""The single configuration tree.

It is the union of CLIP-ReID's tree (SOLVER.STAGE1 / SOLVER.STAGE2) and PCL-CLIP's flat
SOLVER keys, so a YAML written for either upstream repository loads unchanged. Every key
here is read by the code; upstream keys that have no effect in this framework are listed
in ``config.loading.INERT_UPSTREAM_KEYS`` and are accepted with a warning instead. Values no
run can use (a period or batch size below 1, negative workers, an image size that is not two
positive integers, a normalisation without three values or with a std of 0) are refused at
loading by ``config.loading.check_values``.
"""
from yacs.config import CfgNode as CN

_C = CN()

# -----------------------------------------------------------------------------
# MODEL
# -----------------------------------------------------------------------------
_C.MODEL = CN()
# Model family: 'clipreid', 'pcl' or 'baseline'; '' lets each script pick its own
# (test scripts then read it from the checkpoint keys)
_C.MODEL.METHOD = ''
# 'cuda', 'cpu' or 'auto'; 'cuda' falls back to the CPU with a warning when no GPU is
# present, 'auto' takes a GPU when there is one and the CPU otherwise without a warning
_C.MODEL.DEVICE = 'cuda'
# Exported as CUDA_VISIBLE_DEVICES by single-process runs (ignored under torchrun)
_C.MODEL.DEVICE_ID = '0'
# CLIP backbone: 'ViT-B-16', 'ViT-B-32', 'ViT-L-14', 'RN50', 'RN101' (also with '/')
_C.MODEL.NAME = 'ViT-B-16'
# Last stride of the ResNet backbone (1 doubles the final feature map, as in re-ID)
_C.MODEL.LAST_STRIDE = 1
# CLIP weights file (OpenAI TorchScript archive or state_dict); '' = cache, then download
_C.MODEL.PRETRAIN_PATH = ''
# What the CLIP weights are: open_clip's pretrained tag for MODEL.NAME ('openai',
# 'laion2b_s34b_b88k', 'datacomp_xl_s13b_b90k', 'dfn2b', 'metaclip_fullcc', RN50 'yfcc15m',
# ...). It sets the activation (QuickGELU or GELU) and the download (open_clip's cache)
_C.MODEL.CLIP_PRETRAINED = 'openai'
# 'imagenet' = start from CLIP weights; 'self' = also load a whole re-ID model from
# MODEL.PRETRAIN_PATH_REID before training (fine-tuning a previous run)
_C.MODEL.PRETRAIN_CHOICE = 'imagenet'
# Re-ID checkpoint loaded when PRETRAIN_CHOICE is 'self'
_C.MODEL.PRETRAIN_PATH_REID = ''
# 'bnneck' puts BatchNorm necks before the classifiers; 'no' feeds features directly
_C.MODEL.NECK = 'bnneck'
# 'yes' adds center loss (weight SOLVER.*.CENTER_LOSS_WEIGHT, own SGD with CENTER_LR)
_C.MODEL.IF_WITH_CENTER = 'no'
# Identity loss type; only 'softmax' (cross-entropy) is implemented
_C.MODEL.ID_LOSS_TYPE = 'softmax'
# Weight of the identity (classification) loss
_C.MODEL.ID_LOSS_WEIGHT = 1.0
# Weight of the triplet loss
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
# Weight of CLIP-ReID's image-to-text cross-entropy in stage 2
_C.MODEL.I2T_LOSS_WEIGHT = 1.0
# Metric loss; only 'triplet' (batch-hard) is implemented
_C.MODEL.METRIC_LOSS_TYPE = 'triplet'
# Require a torchrun launch (DDP); a torchrun launch trains with DDP either way
_C.MODEL.DIST_TRAIN = False
# 'True' uses the soft-margin triplet loss instead of SOLVER.MARGIN
_C.MODEL.NO_MARGIN = False
# 'on' applies label smoothing (epsilon 0.1) to the identity loss
_C.MODEL.IF_LABELSMOOTH = 'on'
# Convert BatchNorm layers to SyncBatchNorm under DDP
_C.MODEL.SYNC_BN = False
# ViT patch stride [h, w]: 16 = no overlap, 12 = overlapping patches (OLP)
_C.MODEL.STRIDE_SIZE = [16, 16]
# Scale of the SIE camera/view embedding added to the class token
_C.MODEL.SIE_COE = 3.0
# Add a learned per-camera embedding to the class token
_C.MODEL.SIE_CAMERA = False
# Add a learned per-viewpoint embedding to the class token
_C.MODEL.SIE_VIEW = False
# Object word of the CLIP-ReID prompt 'A photo of a X X X X <word>.'; '' = from dataset
_C.MODEL.PROMPT_OBJECT = ''
# Number of learnable prompt tokens per identity
_C.MODEL.PROMPT_N_CTX = 4
# PCL: weight of the prototypical contrastive loss
_C.MODEL.PCL_LOSS_WEIGHT = 1.0
# PCL: momentum of the centroid memory update
_C.MODEL.MEMORY_MOMENTUM = 0.2
# PCL: temperature of the prototypical contrastive loss
_C.MODEL.PCL_TEMPERATURE = 0.05
# PCL: memory update per identity of the batch from its 'hard' (least similar) sample, as
# upstream, or 'sequential' from every sample in batch order (upstream's non-hard memory)
_C.MODEL.MEMORY_UPDATE = 'hard'
# PCL: train without identity labels: pseudo-identities from clustering the training set
# (CLUSTER.*); the train labels are never read and the ID loss is dropped
_C.MODEL.UNSUPERVISED = False

# -----------------------------------------------------------------------------
# INPUT
# -----------------------------------------------------------------------------
_C.INPUT = CN()
# Training image size [h, w]
_C.INPUT.SIZE_TRAIN = [384, 128]
# Test image size [h, w]
_C.INPUT.SIZE_TEST = [384, 128]
# Probability of a horizontal flip
_C.INPUT.PROB = 0.5
# Probability of random erasing
_C.INPUT.RE_PROB = 0.5
# Per-channel normalisation mean
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
# Per-channel normalisation std
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
# Padding before the random crop
_C.INPUT.PADDING = 10

# -----------------------------------------------------------------------------
# DATASETS
# -----------------------------------------------------------------------------
_C.DATASETS = CN()
# Dataset name in the registry (market1501, msmt17, veri, dukemtmc, occ_duke,
# VehicleID, animals, custom, cuhk03_np, ...); a list, e.g. ('market1501', 'msmt17'), trains
# on their union (identities and cameras offset per dataset, as fast-reid's DATASETS.NAMES)
_C.DATASETS.NAMES = 'market1501'
# Datasets to evaluate on, e.g. ('msmt17',) for direct transfer; each by its own protocol,
# found under ROOT_DIR by its usual folder name. () = the training dataset(s). The first
# one's figures are the run's summary
_C.DATASETS.TEST_NAMES = ()
# CUHK03-NP: 'labeled' (hand-drawn boxes) or 'detected' (DPM boxes)
_C.DATASETS.CUHK03_VARIANT = 'labeled'
# Root folder holding the dataset folders
_C.DATASETS.ROOT_DIR = '../data'
# Animals: folder holding the test images (probe and gallery lists are relative to it)
_C.DATASETS.TEST_ROOT_DIR = ''
# Animals: species ('yak', 'tiger', 'elephant'); also the default prompt object word
_C.DATASETS.SPECIES = 'tiger'
# Animals: folder under ROOT_DIR holding the training images
_C.DATASETS.DATA_DIR = 'Animal-Seg-V3'
# List files (animals, custom): train / query (probe) / gallery, relative to ROOT_DIR
_C.DATASETS.TRAIN_LIST = ''
_C.DATASETS.QUERY_LIST = ''
_C.DATASETS.GALLERY_LIST = ''
# VehicleID test split size: 800, 1600 or 2400
_C.DATASETS.VEHICLEID_TEST_SIZE = 800
# VeRi: keypoint/orientation file giving viewpoint labels for SIE_VIEW ('' = none)
_C.DATASETS.VIEW_LABELS = ''
# Corrupt or unreadable image: 'error' stops naming the file, 'skip' skips and counts
_C.DATASETS.ON_BAD_IMAGE = 'error'
# Validation split: hold out this many training identities (drawn with SOLVER.SEED), never
# trained on, scored during training by the standard protocol (one-camera data: the animal
# protocol); query = one image per identity and camera, gallery = the rest. 0 = off
_C.DATASETS.VAL_IDENTITIES = 0

# -----------------------------------------------------------------------------
# DATALOADER
# -----------------------------------------------------------------------------
_C.DATALOADER = CN()
# Number of loader worker processes
_C.DATALOADER.NUM_WORKERS = 8
# 'softmax' = shuffled batches; 'softmax_triplet' / 'triplet' = PK identity sampling
_C.DATALOADER.SAMPLER = 'softmax'
# K: images per identity in a PK batch
_C.DATALOADER.NUM_INSTANCE = 16


def _stage(schedule):
    """A solver node: the keys every stage reads, plus those of its schedule.

    'multistep' (PCL-CLIP's and the baseline's flat SOLVER, CLIP-ReID's STAGE2: warmup then
    steps, evaluation, center loss) or 'cosine' (CLIP-ReID's STAGE1: warmup then cosine, no
    evaluation). Defaults equal the upstream ones, so upstream YAMLs that leave a key out
    behave the same.
    """
    node = CN()
    # Global batch size (split across DDP ranks)
    node.IMS_PER_BATCH = 64
    # 'Adam', 'AdamW' or 'SGD'
    node.OPTIMIZER_NAME = 'Adam'
    # Number of epochs
    node.MAX_EPOCHS = 100
    # Base learning rate
    node.BASE_LR = 3e-4
    # Learning-rate factor for biases
    node.BIAS_LR_FACTOR = 1.0
    # Use twice the learning rate for classifier layers
    node.LARGE_FC_LR = False
    # SGD momentum
    node.MOMENTUM = 0.9
    # Weight decay of weights / of biases
    node.WEIGHT_DECAY = 0.0005
    node.WEIGHT_DECAY_BIAS = 0.0005
    # Save a checkpoint every N epochs
    node.CHECKPOINT_PERIOD = 10
    # Log every N iterations
    node.LOG_PERIOD = 100
    if schedule == 'cosine':
        # Cosine schedule: warmup epochs, warmup start lr, final lr
        node.WARMUP_EPOCHS = 5
        node.WARMUP_LR_INIT = 0.01
        node.LR_MIN = 0.000016
        return node
    # Layer-wise LR decay of a ViT image encoder: block i of L (from 0) gets
    # BASE_LR * LAYER_DECAY ** (L - i), the embeddings ** (L + 1), the heads BASE_LR; 1.0 = off
    node.LAYER_DECAY = 1.0
    # Multistep schedule: decay factor and epochs
    node.GAMMA = 0.1
    node.STEPS = (40, 70)
    # Multistep warmup: start factor, length in epochs (upstream name), 'linear' or 'constant'
    node.WARMUP_FACTOR = 0.01
    node.WARMUP_ITERS = 500
    node.WARMUP_METHOD = 'linear'
    # Evaluate every N epochs (and after the last one)
    node.EVAL_PERIOD = 10
    # Center loss: SGD learning rate of the centers and loss weight
    node.CENTER_LR = 0.5
    node.CENTER_LOSS_WEIGHT = 0.0005
    return node


# -----------------------------------------------------------------------------
# SOLVER: flat keys (PCL-CLIP, baseline) plus STAGE1 / STAGE2 (CLIP-ReID)
# -----------------------------------------------------------------------------
_C.SOLVER = _stage('multistep')
# Random seed
_C.SOLVER.SEED = 1234
# Triplet loss margin
_C.SOLVER.MARGIN = 0.3
# PCL: iterations (PK batches) per epoch
_C.SOLVER.ITERS = 200
# Training precision: 'fp16' (autocast + GradScaler, as upstream), 'bf16' (autocast), 'off'
# (float32), 'auto' (bf16 on a CUDA GPU that supports it, else fp16; float32 on the CPU).
# Loss arithmetic and evaluation always run in float32
_C.SOLVER.AMP = 'auto'
# Resume from this training-state file ('' = start fresh; 'auto' = latest in OUTPUT_DIR)
_C.SOLVER.RESUME = ''
# Make CPU/GPU kernels deterministic (slower; used for exact resume checks)
_C.SOLVER.DETERMINISTIC = False
# Also write the training curves (losses, learning rate, validation metrics) as TensorBoard
# event files under OUTPUT_DIR/tensorboard; OUTPUT_DIR/metrics.csv is written either way
_C.SOLVER.TENSORBOARD = True
# At the end of training, draw metrics.csv as OUTPUT_DIR/curves.png (matplotlib; the numbers
# drawn in curves.csv beside it): losses, learning rate, validation metrics, clustering
_C.SOLVER.PLOT_CURVES = False
_C.SOLVER.STAGE1 = _stage('cosine')
_C.SOLVER.STAGE2 = _stage('multistep')

# -----------------------------------------------------------------------------
# CLUSTER: pseudo-identities of unsupervised training (MODEL.UNSUPERVISED)
# -----------------------------------------------------------------------------
_C.CLUSTER = CN()
# DBSCAN: largest k-reciprocal Jaccard distance between neighbours
_C.CLUSTER.EPS = 0.6
# DBSCAN: neighbours (the image itself included) that make an image a core point
_C.CLUSTER.MIN_SAMPLES = 4
# Jaccard distance: k-reciprocal neighbourhood size and query-expansion size
_C.CLUSTER.K1 = 30
_C.CLUSTER.K2 = 6
# Re-cluster every N epochs (the memory is rebuilt from fresh features every epoch)
_C.CLUSTER.PERIOD = 1
# 'cluster': prototypical contrastive loss against one centroid per cluster (ClusterContrast);
# 'camera_proxy': one centroid per (cluster, camera) with the offline and online
# proxy losses of O2CAP, PK batches over proxies
_C.CLUSTER.LOSS = 'cluster'
# camera_proxy: hardest negative proxies kept in each softmax
_C.CLUSTER.PROXY_NEGATIVES = 50
# camera_proxy: positives of the online loss (best proxy of each camera, the top N cameras)
_C.CLUSTER.PROXY_POSITIVES = 3
# camera_proxy: online similarity = BALANCE * sample-proxy + (1 - BALANCE) * proxy-proxy
_C.CLUSTER.PROXY_BALANCE = 0.15

# -----------------------------------------------------------------------------
# TEST
# -----------------------------------------------------------------------------
_C.TEST = CN()
# Test batch size
_C.TEST.IMS_PER_BATCH = 128
# Apply k-reciprocal re-ranking
_C.TEST.RE_RANKING = False
# Re-ranking parameters; each may be a list (e.g. [20, 30, 50]) to evaluate every combination
# in one pass: the first combination is the result, the others are logged as a table
_C.TEST.RE_RANKING_K1 = 20
_C.TEST.RE_RANKING_K2 = 6
_C.TEST.RE_RANKING_LAMBDA = 0.3
# Initial distance of re-ranking: 'euclidean' (squared, on features) or 'cosine_sq'
# ((2 - 2 cos)^2, the animal code's variant)
_C.TEST.RE_RANKING_DIST = 'euclidean'
# Re-ID checkpoint to evaluate
_C.TEST.WEIGHT = ''
# Test feature before or after the BN-neck: 'before' or 'after'
_C.TEST.NECK_FEAT = 'after'
# 'yes' L2-normalises features before the distance
_C.TEST.FEAT_NORM = 'yes'
# 'euclidean' or 'cosine'
_C.TEST.DISTANCE = 'euclidean'
# Save the query x gallery distance matrix under OUTPUT_DIR with this name ('' = no)
_C.TEST.DIST_MAT = ''
# Evaluation protocol: 'auto' (from the dataset), 'standard', 'vehicleid', 'animal', 'atrw'
_C.TEST.PROTOCOL = 'auto'
# Animal protocol AP: 'standard' or 'trapezoid' (the animal paper's numbers)
_C.TEST.AP_MODE = 'trapezoid'
# ATRW: official plain-track annotation JSON
_C.TEST.ATRW_ANNOTATION = ''
# ATRW: 'dedup' = every test image once, each query ignores its own image (the official
# rule); 'animal_code' = as the animal code's test_rerank_clipreid.py computed the published
# tiger numbers: the test list enters (re-ranking) twice, as query and as gallery, and each
# query drops its top-ranked entry instead of its own image
_C.TEST.ATRW_MODE = 'dedup'
# VehicleID: number of random gallery draws averaged
_C.TEST.VEHICLEID_TRIALS = 10
# Number of ranks reported in the CMC
_C.TEST.MAX_RANK = 50
# GiB that evaluation, re-ranking and the query tool may add to the features for their
# distance chunks and buffers (0 = half the free memory of the device they run on); only the
# chunk sizes depend on it, never a result. A kept distance matrix (TEST.DIST_MAT,
# TEST.VISUALIZE) comes on top
_C.TEST.MEMORY_BUDGET = 0.0
# Evaluate the untrained model before training (the zero-shot reference point)
_C.TEST.EVAL_BEFORE_TRAIN = False
# Save rank-list pictures for the first N queries (0 = none)
_C.TEST.VISUALIZE = 0
# Lay each rank-list image's heat map over it (what drives the match: Grad-CAM of the
# query-gallery distance, processor/heatmaps.py); needs TEST.VISUALIZE > 0
_C.TEST.VISUALIZE_HEATMAP = False

# Folder for logs and checkpoints
_C.OUTPUT_DIR = 'output'
