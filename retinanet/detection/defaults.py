"""The components' default settings, written once: the RetinaNet paper's values (Lin et al. 2017)
and this project's choices for the keys the paper does not have.

The components' keyword defaults (`RetinaNetLoss`, `LabelEncoder`, `Postprocessor`,
`build_retinanet` and the model parts) and the config schema's field defaults
(`retinanet.config.schema`) both read these names, so that a component built without a config
behaves as one built from the default config. The anchor shapes (levels, sizes, aspect ratios,
scales) are the same kind of value and live beside their code in `retinanet.detection.anchors`.

No TensorFlow here: the config imports this module, and a config is validated before
TensorFlow loads.
"""

from __future__ import annotations

# --- Loss: `RetinaNetLoss`, `focal_loss`, `smooth_l1`; config section `loss` -------------------

FOCAL_ALPHA = 0.25  # weight of the positive class in the focal loss, in [0, 1]
FOCAL_GAMMA = 2.0  # focusing exponent of the focal loss; 0 = cross-entropy
CLASSIFICATION_LOSS = "focal"  # a name of `retinanet.detection.losses.CLASSIFICATION_LOSSES`
SMOOTH_L1_DELTA = 1.0 / 9.0  # where smooth L1 turns from quadratic to linear, in encoded-delta units
BOX_LOSS = "smooth_l1"  # a name of `retinanet.detection.losses.BOX_LOSSES`
BOX_WEIGHT = 1.0  # box term multiplier in the total loss
LABEL_SMOOTHING = 0.0  # fraction of each one-hot label moved towards 0.5

# --- Anchor matching: `LabelEncoder`; config section `anchors` ---------------------------------

POSITIVE_IOU = 0.5  # an anchor with IoU >= this with a box is positive for it
NEGATIVE_IOU = 0.4  # an anchor with IoU < this with every box is negative; between the two: ignored
ALLOW_LOW_QUALITY_MATCHES = False  # each box's best anchors positive even below POSITIVE_IOU

# --- Post-processing: `Postprocessor`; config section `postprocessing` -------------------------

CANDIDATE_SCORE_THRESHOLD = 0.05  # a candidate box must score above this class probability to enter NMS
PRE_NMS_TOP_K = 1000  # candidates kept per pyramid level before NMS
NMS_IOU = 0.5  # NMS suppresses a box overlapping a better one of its class above this IoU
MAX_DETECTIONS = 100  # detections kept per image
BOX_SHRINK = 1.0  # factor on each detection's width and height about its centre; 1 keeps them
BOX_VOTING_IOU = 0.0  # > 0: each kept box becomes the score-weighted mean of the candidates above this IoU
FLIP_TTA = False  # also run the left-right mirrored image and fuse the two passes
IMAGE_GATING = "none"  # a name of `retinanet.detection.postprocess.IMAGE_GATINGS`
IMAGE_GATE_THRESHOLD = 0.5  # image probability below which IMAGE_GATING "gate" empties an image

# --- Model: `build_retinanet`, `build_backbone`, `build_fpn`, `build_head`; config section `model` -

NUM_CLASSES = 1  # object classes (RSNA: lung opacity)
WEIGHTS = "none"  # backbone weights: "none" (random), "imagenet" or a path to a weights file
FPN_CHANNELS = 256  # channels of every pyramid level and of the heads' convolutions
HEAD_CONVS = 4  # 3x3 convolutions in each head before its output convolution
HEAD_GROUP_NORM = False  # group normalisation after each head convolution
PRIOR_PROBABILITY = 0.01  # every anchor's class probability at initialisation
FREEZE_BATCH_NORM = False  # keep the backbone's batch-norm layers fixed
FREEZE_BACKBONE_STAGES = 0  # 0 trains every stage; N freezes conv1..conv<N>
BATCH_NORM_MOMENTUM = 0.99  # the backbone's batch-norm moving-average momentum (Keras' own default)
IMAGE_HEAD = True  # add the image-level "pneumonia present" logit on C5
