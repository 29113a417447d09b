"""The `cfg.MASKINIT` keys (Detectron2's `add_*_config` extension style, as Detectron2 keeps its own keys in
`detectron2/config/defaults.py`): one comment per key saying what it does and the values it takes; every
value is checked when a config is built (`maskinit.config.checks`). Also the values a few keys accept."""

from __future__ import annotations

from detectron2.config import CfgNode, get_cfg

# Optimizers `MASKINIT.OPTIMIZER` accepts; the adaptive ones want LRs and weight decays of their own.
ADAPTIVE_OPTIMIZERS = ("adam", "adamw")
OPTIMIZERS = ("sgd", *ADAPTIVE_OPTIMIZERS)
LR_SCHEDULES = ("step", "cosine", "plateau")
AMP_DTYPES = ("auto", "bfloat16", "float16")
FIT_MODES = ("off", "safe", "full")
# ResNet depths Detectron2's build_resnet_backbone knows.
RESNET_DEPTHS = (18, 34, 50, 101, 152)


def add_maskinit_config(cfg: CfgNode) -> CfgNode:
    """Add the `cfg.MASKINIT` keys (Detectron2's `add_*_config` extension style)."""
    if "MASKINIT" in cfg:
        return cfg
    _C = cfg
    _C.MASKINIT = CfgNode()
    # Name of the preset this config started from (informational).
    _C.MASKINIT.PRESET = ""
    # Name of the published recipe (configs/recipes/) this config started from (informational).
    _C.MASKINIT.RECIPE = ""
    # Norm variant for backbone, FPN, box head and mask head: NAME[:key=value,...] from the norm registry.
    _C.MASKINIT.NORM = "GN"
    # Also put the norm variant into the RPN head's convolutions.
    _C.MASKINIT.RPN_NORM = False
    # Initializer for every component without one of its own: NAME[:key=value,...].
    _C.MASKINIT.INIT = "c2"
    # Per-component initializers; empty means MASKINIT.INIT.
    _C.MASKINIT.COMPONENT_INIT = CfgNode()
    # Initializer of the ResNet bottom-up backbone.
    _C.MASKINIT.COMPONENT_INIT.BACKBONE = ""
    # Initializer of the FPN lateral and output convolutions.
    _C.MASKINIT.COMPONENT_INIT.FPN = ""
    # Initializer of the RPN head's hidden convolutions.
    _C.MASKINIT.COMPONENT_INIT.RPN = ""
    # Initializer of the box head's convolutions and FCs.
    _C.MASKINIT.COMPONENT_INIT.BOX_HEAD = ""
    # Initializer of the mask head's convolutions and deconvolution.
    _C.MASKINIT.COMPONENT_INIT.MASK_HEAD = ""
    # Keep Detectron2's detection-head priors (box cls std 0.01, box reg 0.001, mask 0.001, RPN 0.01).
    _C.MASKINIT.HEAD_PRIORS = True
    # Focal-style prior foreground probability for the RPN and box classifier biases; 0 disables.
    _C.MASKINIT.PRIOR_PROB = 0.0
    # Zero-init the scale of the last norm in each residual block (Goyal et al.).
    _C.MASKINIT.ZERO_INIT_RESIDUAL = False
    # Python modules imported before building, registering initializers and norms.
    _C.MASKINIT.PLUGINS = []
    # Optimizer: sgd (Detectron2's), adam or adamw (same parameter groups, weight decay and clipping).
    _C.MASKINIT.OPTIMIZER = "sgd"
    # LR schedule after warmup: step (SOLVER.STEPS), cosine, or plateau (see MASKINIT.PLATEAU).
    _C.MASKINIT.LR_SCHEDULE = "step"
    # Fit the config to the user's training data (data/fit.py): safe (pixel statistics, anchors, counts, and a
    # larger input or RoI batch only within 1.2x the preset's estimated s/iter), full (the input and RoI batch the
    # objects need, at any cost) or off.
    _C.MASKINIT.FIT = "safe"
    # False turns the fit off whatever MASKINIT.FIT says (the switch configs written before MASKINIT.FIT carry).
    _C.MASKINIT.FIT_TO_DATA = True
    # Refuse, before training, a run whose estimated peak memory exceeds what this machine has (maskinit/machine.py).
    _C.MASKINIT.MEMORY_CHECK = True
    # Mixed-precision dtype when SOLVER.AMP.ENABLED: auto (bf16 where supported, else fp16), bfloat16, float16.
    _C.MASKINIT.AMP_DTYPE = "auto"
    _C.MASKINIT.PLATEAU = CfgNode()
    # Metric watched: a validation AP such as segm/AP or bbox/AP (needs TEST.EVAL_PERIOD), or total_loss.
    _C.MASKINIT.PLATEAU.METRIC = "total_loss"
    # Iterations between checks of the metric (for AP, use TEST.EVAL_PERIOD).
    _C.MASKINIT.PLATEAU.PERIOD = 100
    # Checks without improvement tolerated before the LR is divided.
    _C.MASKINIT.PLATEAU.PATIENCE = 2
    # Factor applied to the LR on a plateau.
    _C.MASKINIT.PLATEAU.FACTOR = 0.1
    # The LR never goes below this.
    _C.MASKINIT.PLATEAU.MIN_LR = 0.0
    # Smallest relative change that counts as an improvement (0.01: 1% better than the best), as torch's
    # ReduceLROnPlateau threshold.
    _C.MASKINIT.PLATEAU.THRESHOLD = 1e-4
    # Checks after a reduction during which no check counts against the patience.
    _C.MASKINIT.PLATEAU.COOLDOWN = 0
    _C.MASKINIT.AUGMENT = CfgNode()
    # Training augmentation: default (Detectron2's INPUT.* resize and flip) or lsj (large-scale jitter).
    _C.MASKINIT.AUGMENT.NAME = "default"
    # LSJ: smallest random scale of the LSJ_IMAGE_SIZE square the image is resized to fit.
    _C.MASKINIT.AUGMENT.LSJ_MIN_SCALE = 0.1
    # LSJ: largest random scale of that square.
    _C.MASKINIT.AUGMENT.LSJ_MAX_SCALE = 2.0
    # LSJ: side of the square training image, randomly cropped or padded (image 128, segmentation 255) to it.
    _C.MASKINIT.AUGMENT.LSJ_IMAGE_SIZE = 1024
    # Simple Copy-Paste (maskinit/copy_paste.py): objects of another training image pasted by their masks.
    _C.MASKINIT.AUGMENT.COPY_PASTE = CfgNode()
    # Probability that a training image gets objects pasted, in [0, 1]; 0 (the default) turns copy-paste off.
    _C.MASKINIT.AUGMENT.COPY_PASTE.PROB = 0.0
    # Most objects pasted onto one image (a random 1 to this many of the source image's objects).
    _C.MASKINIT.AUGMENT.COPY_PASTE.MAX_INSTANCES = 20
    # Pixels below which an instance that lost pixels (covered by pasted objects, or cropped) is dropped.
    _C.MASKINIT.AUGMENT.COPY_PASTE.MIN_AREA = 16
    # Exponential moving average of the weights (maskinit/ema.py), for evaluation and model_final.pth.
    _C.MASKINIT.EMA = CfgNode()
    # Keep the average (True) or not (False, the default).
    _C.MASKINIT.EMA.ENABLED = False
    # Decay d of w_ema = d * w_ema + (1 - d) * w per iteration, in (0, 1); the window is about 1 / (1 - d) iterations.
    _C.MASKINIT.EMA.DECAY = 0.9998
    # Warmup of the decay: d * (1 - exp(-iteration / WARMUP_ITERS)); 0 for none (mmdetection's ExpMomentumEMA: 2000).
    _C.MASKINIT.EMA.WARMUP_ITERS = 2000
    # Restart the average from the current weights at each LR step (SOLVER.STEPS), its decay warming up again,
    # so that after a step it averages the weights of the new LR only (True) or not (False).
    _C.MASKINIT.EMA.RESTART_AT_STEPS = False
    # The data a run used, recorded by train (maskinit/data/sources.py: record_data), so that `train --resume`
    # and `eval RUN_DIR` find it again; empty everywhere: the embedded default set.
    _C.MASKINIT.DATA = CfgNode()
    # The folder or data.yaml given as --data (any format maskinit reads); empty: COCO files or registered names.
    _C.MASKINIT.DATA.SOURCE = ""
    # Its format (coco, label-image, instance-masks, yolo, labelme, via, cvat, voc), detected or given by --format.
    _C.MASKINIT.DATA.FORMAT = ""
    # Share of a one-split source's images held back for validation (--val-fraction), in [0, 1); 0: none held back.
    _C.MASKINIT.DATA.VAL_FRACTION = 0.0
    # Seed of that split (--split-seed): the same seed holds back the same images.
    _C.MASKINIT.DATA.SPLIT_SEED = 0
    # COCO instances JSON the run trained on (for --data: its converted copy).
    _C.MASKINIT.DATA.TRAIN_JSON = ""
    # Image folder of TRAIN_JSON.
    _C.MASKINIT.DATA.TRAIN_IMAGES = ""
    # COCO instances JSON the run validated on; empty: none, or a registered name.
    _C.MASKINIT.DATA.VAL_JSON = ""
    # Image folder of VAL_JSON.
    _C.MASKINIT.DATA.VAL_IMAGES = ""
    # Registered dataset name trained on (--dataset).
    _C.MASKINIT.DATA.DATASET = ""
    # Registered dataset name validated on (--val-dataset).
    _C.MASKINIT.DATA.VAL_DATASET = ""
    # Training set's category names in model output (contiguous) order, set by train; empty: unknown.
    _C.MASKINIT.CLASS_NAMES = []
    # Training set's category ids (COCO category_id) in the same order as CLASS_NAMES; empty: unknown.
    _C.MASKINIT.CLASS_IDS = []
    return cfg


def new_config() -> CfgNode:
    """Detectron2's default config with the `cfg.MASKINIT` keys."""
    cfg = get_cfg()
    add_maskinit_config(cfg)
    return cfg
